"""`kneuron.engine.eval.scoring.ScoreCache`: each distinct (caption, references) pair scored once, equal inputs equal
values, and the values those of the metric library itself."""
from __future__ import annotations

import pytest

from kneuron.engine.eval.scoring import ScoreCache


class CountingScorer:
    """Stands in for `CaptionScorer`: BLEU-4 from sacrebleu itself, counting the pairs it is asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def score(self, hyps, refs, metrics):  # noqa: ANN001
        import numpy as np
        import sacrebleu

        self.asked.extend(zip(hyps, (tuple(r) for r in refs), strict=True))
        return {"bleu4": np.array([sacrebleu.sentence_bleu(h, list(r)).score / 100
                                   for h, r in zip(hyps, refs, strict=True)])}


def test_score_cache_scores_each_pair_once():
    scorer = CountingScorer()
    cache = ScoreCache(scorer, ("bleu4",))
    pairs = [("a red circle on the plain background", ("a red circle on a plain background",)),
             ("a star", ("a star", "a blue star")), ("a red circle on the plain background",
                                                      ("a red circle on a plain background",))]
    first = cache.score(pairs)
    assert first[0] == first[2] and first[1]["bleu4"] == pytest.approx(1.0)
    assert cache.score(pairs[:2]) == first[:2]
    assert scorer.asked == pairs[:2]  # each distinct pair once, in order
    import sacrebleu
    assert first[0]["bleu4"] == sacrebleu.sentence_bleu(pairs[0][0], list(pairs[0][1])).score / 100
