"""`decode_rows` (greedy decoding that drops finished rows) equals the language model's own ``generate`` token for
token; `plain_greedy` refuses configs that add logits processors; captioning takes the own loop exactly where
the adapter hands out its language model's inputs, and then equals the model's ``generate`` under every set."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kneuron.engine.interventions.greedy import decode_rows, plain_greedy
from kneuron.engine.interventions.multiset import _own_plan, caption_under_sets
from tests.engine.interventions.test_multiset import hooked_captions, some_sets
from tests.helpers.hf_tiny import tiny_adapter, varied_images


def tiny_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def generated(lm: LlamaForCausalLM, embeds: torch.Tensor, stops: list[int], n: int) -> list[list[int]]:
    """Reference: HF generate, cut after each row's first stop token."""
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    with torch.no_grad():
        out = lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          num_beams=1, eos_token_id=stops, pad_token_id=0)
    rows = []
    for row in out.tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return rows


def test_decode_rows_equals_generate_with_rows_stopping_at_different_steps() -> None:
    lm = tiny_lm()
    embeds = torch.randn(9, 5, 32, generator=torch.Generator().manual_seed(1))
    stops = [2, 7]
    seen: list[int] = []
    got = decode_rows(lm, embeds, stops, max_new_tokens=12, on_rows=lambda rows: seen.append(len(rows)))
    assert got == generated(lm, embeds, stops, 12)
    lengths = {len(t) for t in got}
    assert len(lengths) > 1  # rows stop at different steps: the dropping path is exercised
    assert seen[0] == 9 and min(seen) < 9  # the batch shrinks as rows stop
    assert all(t[-1] in stops for t in got if len(t) < 12)


def test_decode_rows_without_stops_and_edge_cases() -> None:
    lm = tiny_lm(seed=3)
    embeds = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(2))
    assert decode_rows(lm, embeds, [], max_new_tokens=6) == generated(lm, embeds, [], 6)
    assert decode_rows(lm, embeds, [2], max_new_tokens=0) == [[], [], []]
    assert decode_rows(lm, embeds[:0], [2], max_new_tokens=4) == []


def test_plain_greedy_refuses_logits_processors() -> None:
    lm = tiny_lm()
    assert plain_greedy(lm)
    lm.generation_config.repetition_penalty = 1.3
    assert not plain_greedy(lm)
    lm.generation_config.repetition_penalty = 1.0
    lm.generation_config.suppress_tokens = [4]
    assert not plain_greedy(lm)


@pytest.mark.parametrize("kind", ["minigpt4-qformer", "minigpt4-patch", "llava"])
def test_captioning_takes_the_own_loop_only_where_it_can(kind: str) -> None:
    adapter = tiny_adapter(kind)
    images = varied_images(3, seed=1)
    own = _own_plan(adapter, images, 2, {})
    assert (own is not None) == kind.startswith("minigpt4")
    if own is not None:
        assert (own.max_new_tokens, own.stop_ids) == (adapter.max_new_tokens, adapter.stop_token_ids)
        whole = adapter.generation_embeds(adapter.prepare(images))
        assert whole is not None and own.embeds.shape == whole.shape
        assert torch.allclose(own.embeds, whole, atol=1e-6)  # embedded 2 + 1 images at a time
        assert own.prompt_length == whole.shape[1]
        assert _own_plan(adapter, images, 2, {"repetition_penalty": 1.2}) is None
        three = _own_plan(adapter, images, 2, {"max_new_tokens": 3})
        assert three is not None and three.max_new_tokens == 3


def zeroing(units, layer):  # noqa: ANN001, ANN201
    """A plain forward pre-hook zeroing ``units`` of the neuron site's input."""
    index = torch.as_tensor(list(units))

    def hook(module, args):  # noqa: ANN001, ANN202
        x = args[0].clone()
        x[..., index] = 0
        return (x, *args[1:])
    return hook


@pytest.mark.parametrize("kind", ["minigpt4-qformer", "minigpt4-patch"])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_own_loop_equals_the_models_generate_under_every_set(kind: str, rows: int) -> None:
    adapter = tiny_adapter(kind)
    images = varied_images(5, seed=3)
    sets = [None, *some_sets(adapter, n=3, size=40, seed=7)]
    got = caption_under_sets(adapter, images, sets, rows_per_generate=rows)
    for s, captions in zip(sets, got, strict=True):
        assert captions.token_ids == hooked_captions(adapter, images, s or {}, zeroing)
    assert any(c.token_ids != got[0].token_ids for c in got[1:])


def test_an_adapter_that_stops_handing_out_inputs_is_one_error(monkeypatch) -> None:  # noqa: ANN001
    from kneuron.engine.errors import KneuronError

    adapter = tiny_adapter("minigpt4-patch")
    original, calls = adapter.generation_embeds, []

    def first_only(prepared):  # noqa: ANN001, ANN202
        calls.append(prepared.batch_size)
        return original(prepared) if len(calls) == 1 else None
    monkeypatch.setattr(adapter, "generation_embeds", first_only)
    with pytest.raises(KneuronError, match="generation_embeds returned None for some images only"):
        caption_under_sets(adapter, varied_images(3, seed=2), [None], rows_per_generate=2)
    assert calls == [2, 1]
