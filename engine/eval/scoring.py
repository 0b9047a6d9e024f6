"""Caption scores cached by their inputs, so that equal (caption, references) pairs always get equal values (an
empty neuron set, whose captions equal the unmodified ones, then drops by exactly 0) and each pair is scored
once per evaluation. Pure: the scorer is `kneuron.engine.eval.metrics.CaptionScorer` or anything with its ``score``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Scorer(Protocol):
    """What `ScoreCache` needs of `kneuron.engine.eval.metrics.CaptionScorer`: per metric, one value per hypothesis."""

    def score(self, hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Sequence[str]) -> Mapping[str, Any]:
        ...


class ScoreCache:
    """`CaptionScorer` results cached by (hypothesis, references): equal inputs always get equal values."""

    def __init__(self, scorer: Scorer, metrics: Sequence[str]) -> None:
        self.scorer = scorer
        self.metrics = tuple(metrics)
        self._values: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}

    def score(self, pairs: Sequence[tuple[str, tuple[str, ...]]]) -> list[dict[str, float]]:
        """``{metric: value}`` for each (hypothesis, references) pair; new pairs are scored in one call, in order."""
        missing = list(dict.fromkeys(p for p in pairs if p not in self._values))
        if missing:
            values = self.scorer.score([h for h, _ in missing], [list(r) for _, r in missing], self.metrics)
            for index, pair in enumerate(missing):
                self._values[pair] = {m: float(values[m][index]) for m in self.metrics}
        return [self._values[p] for p in pairs]


__all__ = ["ScoreCache", "Scorer"]
