"""`kneuron.engine.signals.decode`: neurons projected through the unembedding, against a direct matrix computation."""
from __future__ import annotations

import pytest
import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.signals.decode import (
    DecodedNeuron,
    concept_hit_rate,
    concept_words,
    decode_neurons,
    excluded_token_ids,
    neuron_hits,
    neuron_logits,
)
from tests.helpers.hf_tiny import tiny_adapter

NEURONS = [(2, 5), (0, 1), (1, 95), (0, 1)]  # unsorted, with a duplicate


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter("minigpt4-qformer")


def reference_logits(adapter, layer: int, unit: int, final_norm: bool) -> torch.Tensor:  # noqa: ANN001
    """W_U @ W_down[:, i] from the raw state dict, RMSNorm written out by hand."""
    state = adapter.model.state_dict()
    column = state[f"language_model.model.layers.{layer}.mlp.down_proj.weight"][:, unit].double()
    if final_norm:
        eps = adapter.model.language_model.config.rms_norm_eps
        column = column / torch.sqrt(column.pow(2).mean() + eps) * state["language_model.model.norm.weight"].double()
    return state["language_model.lm_head.weight"].double() @ column


@pytest.mark.parametrize("final_norm", [False, True])
def test_decode_equals_direct_matrix_computation(adapter, final_norm: bool) -> None:  # noqa: ANN001
    # the tiny model's norm weight is all ones: make it non-trivial so the norm changes the ranking
    with torch.no_grad():
        adapter.model.language_model.model.norm.weight.copy_(torch.linspace(0.2, 3.0, 64))
    decoded = decode_neurons(adapter, NEURONS, k=7, final_norm=final_norm)
    assert [(d.layer, d.unit) for d in decoded] == [(0, 1), (1, 95), (2, 5)]
    for d in decoded:
        ref = reference_logits(adapter, d.layer, d.unit, final_norm)
        top = torch.topk(ref, 7)
        assert list(d.token_ids) == top.indices.tolist()
        assert d.logits == pytest.approx(top.values.tolist(), rel=1e-5, abs=1e-5)
        assert list(d.tokens) == [adapter.tokenizer.decode([i]) for i in top.indices.tolist()]
        assert list(d.logits) == sorted(d.logits, reverse=True)


def test_final_norm_changes_the_projection(adapter) -> None:  # noqa: ANN001
    with torch.no_grad():
        adapter.model.language_model.model.norm.weight.copy_(torch.linspace(0.2, 3.0, 64))
    plain = neuron_logits(adapter, [(1, 3)], final_norm=False)
    normed = neuron_logits(adapter, [(1, 3)], final_norm=True)
    assert plain.shape == normed.shape == (1, len(adapter.tokenizer))
    assert not torch.allclose(plain, normed)


def test_mapping_input_and_bad_neurons(adapter) -> None:  # noqa: ANN001
    by_pairs = decode_neurons(adapter, [(0, 4), (2, 9)], k=3)
    by_map = decode_neurons(adapter, {2: [9], 0: [4]}, k=3)
    assert by_pairs == by_map
    with pytest.raises(KneuronError, match="neuron 3:0 is outside the model"):
        decode_neurons(adapter, [(3, 0)])
    with pytest.raises(KneuronError, match="neuron 0:96 is outside"):
        decode_neurons(adapter, [(0, 96)])
    with pytest.raises(KneuronError, match="k must be >= 1"):
        decode_neurons(adapter, [(0, 0)], k=0)


def test_concept_hit_rate() -> None:
    def neuron(*tokens: str) -> DecodedNeuron:
        return DecodedNeuron(0, 0, tuple(range(len(tokens))), tokens, tuple(0.0 for _ in tokens))

    decoded = [neuron("\u2581Dog", "cat"), neuron("Ġdogs", "x"), neuron("house", "hot"), neuron(" dog.", "a")]
    assert concept_hit_rate(decoded, ["dog", "dogs"]) == pytest.approx(3 / 4)
    assert concept_hit_rate(decoded, ["dog"]) == pytest.approx(2 / 4)
    assert concept_hit_rate(decoded, ["zebra"]) == 0.0
    assert concept_hit_rate([], ["dog"]) != concept_hit_rate([], ["dog"])  # NaN
    with pytest.raises(KneuronError, match="concept word"):
        concept_hit_rate(decoded, ["  "])


def test_concept_words_include_plural_and_model_pieces(adapter) -> None:  # noqa: ANN001
    words = concept_words(adapter, "circle")
    assert words[:2] == ["circle", "circles"]
    # the word-level tiny tokenizer knows "circle" as one token: its first piece is the word itself
    assert "circle" in words
    assert "dining" in concept_words(adapter, "dining table")


# ---------------------------------------------------------------------------------------------- hits exclude specials
class _WordAdapter:
    """What `concept_words` needs of an adapter: its tokenizer and ``concept_tokens`` (as `VLMAdapter` does)."""

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        self.tokenizer = tokenizer

    def concept_tokens(self, word: str) -> list[int]:
        ids = list(self.tokenizer(" " + word, add_special_tokens=False)["input_ids"])
        return ids or list(self.tokenizer(word, add_special_tokens=False)["input_ids"])


def _decoded(tokenizer, rows: list[list[int]]) -> list[DecodedNeuron]:  # noqa: ANN001
    return [DecodedNeuron(0, n, tuple(ids), tuple(tokenizer.decode([i]) for i in ids), tuple(0.0 for _ in ids))
            for n, ids in enumerate(rows)]


def _word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2, "circle": 3, "a": 4, "red": 5, "square": 6, "unk": 7}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def test_out_of_vocabulary_plural_adds_no_unknown_form_and_unknown_never_hits() -> None:
    tok = _word_level_tokenizer()
    adapter = _WordAdapter(tok)
    assert adapter.concept_tokens("circles") == [0]  # the plural is out of the vocabulary: <unk>
    words = concept_words(adapter, "circle")  # type: ignore[arg-type]
    assert "unk" not in words and words[:2] == ["circle", "circles"]
    assert excluded_token_ids(tok) == {0, 1, 2}
    # neuron 0: <unk> and </s> among its tokens, no concept word; neuron 1: 'circle'; neuron 2: <pad> only
    decoded = _decoded(tok, [[0, 2, 5], [6, 3], [1, 4]])
    assert neuron_hits(decoded, words, excluded_token_ids(tok)) == [False, True, False]
    assert concept_hit_rate(decoded, words, excluded_token_ids(tok)) == pytest.approx(1 / 3)
    # even if a caller's word list holds "unk", the <unk> token never counts; the real word "unk" (id 7) does
    assert neuron_hits(_decoded(tok, [[0], [7]]), ["unk"], excluded_token_ids(tok)) == [False, True]


def test_bpe_tokenizer_hits_are_surface_forms() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<pad>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["a red circle on a blue square", "two circles and a circle", "the circle is round"] * 20
    backend.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  eos_token="<|endoftext|>")
    words = concept_words(_WordAdapter(tok), "circle")  # type: ignore[arg-type]
    circle = tok(" circle", add_special_tokens=False)["input_ids"]
    square = tok(" square", add_special_tokens=False)["input_ids"]
    assert len(circle) == 1 and tok.decode(circle) == " circle"
    specials = sorted(excluded_token_ids(tok))
    assert specials == sorted(tok.convert_tokens_to_ids(["<unk>", "<pad>", "<|endoftext|>"]))
    decoded = _decoded(tok, [[square[0], circle[0]], specials, [square[0]]])
    assert neuron_hits(decoded, words, excluded_token_ids(tok)) == [True, False, False]
