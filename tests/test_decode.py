"""`engine.decode`: neurons projected through the unembedding, against a direct matrix computation."""
from __future__ import annotations

import pytest
import torch

from engine.decode import DecodedNeuron, concept_hit_rate, concept_words, decode_neurons, neuron_logits
from engine.errors import KneuronError
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
