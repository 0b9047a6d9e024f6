"""Gemma 3: prompt and ``token_type_ids`` against ``Gemma3Processor``, bidirectional attention among the image
tokens, and the GELU-gated neuron site."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from tests.helpers.hf_tiny import varied_images
from tests.helpers.hf_tiny_vlm import tiny_vlm_adapter


@pytest.fixture(scope="module")
def adapter():
    return tiny_vlm_adapter("gemma3")


def test_prompt_and_token_types_are_the_processors() -> None:
    adapter = tiny_vlm_adapter("gemma3")  # its own tokenizer: this test adds Gemma's named special tokens
    tokenizer = adapter.tokenizer
    tokenizer._set_model_specific_special_tokens({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                  "image_token": "<image_soft_token>"})  # as Gemma's tokenizer has
    processor = tf.Gemma3Processor(image_processor=adapter.image_processor, tokenizer=tokenizer,
                                   image_seq_length=adapter.n_image_tokens)
    text = adapter.template.format(instruction=DEFAULT_INSTRUCTION).replace("<image>", "<start_of_image>")
    out = processor(text=[text] * 2, images=[[im] for im in adapter.resize(varied_images(2))],
                    return_tensors="pt")
    prepared = adapter.prepare(varied_images(2))
    for key in ("input_ids", "token_type_ids", "pixel_values"):
        torch.testing.assert_close(prepared.kwargs[key], out[key])
    assert adapter.n_image_tokens == 16 and adapter.image_regions().grid == (4, 4)
    assert adapter.stop_token_ids[-1] == tokenizer.convert_tokens_to_ids("<end_of_turn>")


def activations(adapter, kwargs, layer: int = 0) -> torch.Tensor:  # noqa: ANN001
    seen = {}
    handle = adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(
        lambda m, a: seen.__setitem__("x", a[0].detach().clone()))
    try:
        with torch.no_grad():
            adapter.model(**kwargs)
    finally:
        handle.remove()
    return seen["x"]


def test_image_tokens_attend_to_each_other_both_ways(adapter) -> None:  # noqa: ANN001
    """With ``token_type_ids`` the first image token's activations depend on later image tokens (bidirectional
    block); without, attention is causal. Text before the image is the same either way."""
    prepared = adapter.prepare(varied_images(1))
    positions = prepared.image_positions
    both = activations(adapter, prepared.kwargs)
    causal = activations(adapter, {k: v for k, v in prepared.kwargs.items() if k != "token_type_ids"})
    first = int(positions[0])
    torch.testing.assert_close(both[:, :first], causal[:, :first])
    assert not torch.allclose(both[:, positions], causal[:, positions])


def test_the_neuron_is_the_gelu_gated_product(adapter) -> None:  # noqa: ANN001
    """``down_proj``'s input = ``gelu_tanh(gate_proj(x)) * up_proj(x)`` (found by structure, not class name)."""
    mlp = adapter.decoder_layers(adapter.model)[1].mlp
    assert adapter.neuron_module(adapter.model, 1) is mlp.down_proj
    assert adapter.model.config.text_config.hidden_activation == "gelu_pytorch_tanh"
    parts = {}
    hooks = [mlp.gate_proj.register_forward_hook(lambda m, a, o: parts.__setitem__("gate", o)),
             mlp.up_proj.register_forward_hook(lambda m, a, o: parts.__setitem__("up", o))]
    try:
        got = activations(adapter, adapter.prepare(varied_images(1)).kwargs, layer=1)
    finally:
        for hook in hooks:
            hook.remove()
    expected = torch.nn.functional.gelu(parts["gate"], approximate="tanh") * parts["up"]
    torch.testing.assert_close(got, expected)
