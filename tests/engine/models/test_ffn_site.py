"""`kneuron.engine.models.ffn_site`: the gated-MLP neuron site found by structure in tiny text models of every supported
architecture (the input of ``down_proj`` is ``act(gate_proj(x)) * up_proj(x)``, read through nnsight too), and a
one-line `KneuronError` naming the architecture for every other MLP shape."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers as tf
from nnsight import NNsight

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.ffn_site import find_ffn_site
from tests.helpers.hf_tiny_vlm import TEXT_KINDS, tiny_vlm_adapter

SIZES: dict[str, Any] = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
GATED = {  # config class, model class, extra config, expected activation
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}, "silu"),
    "smollm": (tf.LlamaConfig, tf.LlamaForCausalLM, {"tie_word_embeddings": True}, "silu"),  # SmolLM = LLaMA
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {}, "silu"),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}, "silu"),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"head_dim": 8}, "silu"),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {"head_dim": 8}, "gelu_pytorch_tanh"),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {"head_dim": 8}, "gelu_pytorch_tanh"),
}
ACTIVATIONS = {"silu": torch.nn.functional.silu,
               "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh")}


def text_model(name: str) -> torch.nn.Module:
    config_cls, model_cls, extra, _ = GATED[name]
    torch.manual_seed(0)
    return model_cls(config_cls(**SIZES, **extra)).eval()


@pytest.mark.parametrize("name", list(GATED))
def test_site_of_every_gated_architecture(name: str) -> None:
    model = text_model(name)
    site = find_ffn_site(model, ("model",))
    assert (site.layers_path, site.mlp_path, site.n_layers, site.d_ff) == (("model", "layers"), ("mlp", "down_proj"),
                                                                          2, 48)
    assert site.architecture == f"{model.config.model_type} ({type(model.model).__name__})"
    mlp = model.model.layers[1].mlp
    assert site.down_proj(model, 1) is mlp.down_proj
    parts: dict[str, torch.Tensor] = {}
    hooks = [mlp.gate_proj.register_forward_hook(lambda m, a, o: parts.__setitem__("gate", o)),
             mlp.up_proj.register_forward_hook(lambda m, a, o: parts.__setitem__("up", o)),
             mlp.down_proj.register_forward_pre_hook(lambda m, a: parts.__setitem__("o", a[0]))]
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    act = ACTIVATIONS[GATED[name][3]]
    torch.testing.assert_close(parts["o"], act(parts["gate"]) * parts["up"])  # [batch, pos, d_ff]
    traced = NNsight(model)  # the same paths work on the nnsight Envoy
    with torch.no_grad(), traced.trace(input_ids=ids):
        saved = site.down_proj(traced, 1).input.save()
    torch.testing.assert_close(saved, parts["o"])


NOT_GATED = {
    "gpt2": (tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40), tf.GPT2Model, (),
             "text model gpt2 (GPT2Model): decoder layer 0 (GPT2Block) has no gate_proj/up_proj/down_proj (its MLP "
             "modules: mlp (GPT2MLP), mlp.c_fc (Conv1D), mlp.c_proj (Conv1D))"),
    "opt": (tf.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=48, num_attention_heads=4, vocab_size=40,
                         word_embed_proj_dim=32), tf.OPTForCausalLM, ("model",),
            "text model opt (OPTModel): decoder layer 0 (OPTDecoderLayer) has no gate_proj/up_proj/down_proj (its "
            "MLP modules: fc1 (Linear), fc2 (Linear))"),
    "phi3": (tf.Phi3Config(**SIZES, pad_token_id=0), tf.Phi3ForCausalLM, ("model",),
             "text model phi3 (Phi3Model): decoder layer 0 (Phi3DecoderLayer) has a fused gate_up_proj, not separate "
             "gate_proj/up_proj"),
    "mixtral": (tf.MixtralConfig(**SIZES, num_local_experts=2), tf.MixtralForCausalLM, ("model",),
                "text model mixtral (MixtralModel): decoder layer 0 (MixtralDecoderLayer) has no "
                "gate_proj/up_proj/down_proj (its MLP modules: mlp (MixtralSparseMoeBlock), mlp.gate "
                "(MixtralTopKRouter), mlp.experts (MixtralExperts))"),
    "qwen2_moe": (tf.Qwen2MoeConfig(**SIZES, num_experts=2, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=16), tf.Qwen2MoeForCausalLM, ("model",),
                  "text model qwen2_moe (Qwen2MoeModel): decoder layer 0 (Qwen2MoeDecoderLayer): its "
                  "gate_proj/up_proj/down_proj (mlp.shared_expert) are not the whole MLP"),
    "t5": (tf.T5Config(num_layers=2, d_model=32, d_ff=48, num_heads=4, vocab_size=40), tf.T5ForConditionalGeneration,
           ("model",), "text model t5 (T5ForConditionalGeneration) has no decoder stack at model (encoder-decoder?)"),
}


@pytest.mark.parametrize("name", list(NOT_GATED))
def test_other_mlps_are_one_line_errors_naming_the_architecture(name: str) -> None:
    config, model_cls, path, expected = NOT_GATED[name]
    with torch.device("meta"):
        model = model_cls(config)
    with pytest.raises(KneuronError) as info:
        find_ffn_site(model, path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(expected), message
    assert message.endswith(": kneuron reads the input of down_proj in a gated MLP "
                            "down_proj(act(gate_proj(x)) * up_proj(x))")


def test_layers_must_agree() -> None:
    model = text_model("llama")
    model.model.layers[1].mlp.down_proj = torch.nn.Linear(24, 32)  # a layer with another width
    model.model.layers[1].mlp.gate_proj = torch.nn.Linear(32, 24)
    model.model.layers[1].mlp.up_proj = torch.nn.Linear(32, 24)
    with pytest.raises(KneuronError, match="decoder layers differ in their MLP"):
        find_ffn_site(model, ("model",))
    model.model.layers[1].mlp.up_proj = torch.nn.Linear(32, 20)
    with pytest.raises(KneuronError, match=r"decoder layer 1 \(LlamaDecoderLayer\): gate_proj/up_proj give 24/20 "
                                           r"units but down_proj reads 24"):
        find_ffn_site(model, ("model",))


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_llava_with_other_gated_text_models(kind: str) -> None:
    """LLaVA over Mistral / Qwen2 / Qwen3 / Gemma 2 text models (`tests/engine/signals/test_record.py` and
    `tests/engine/interventions/test_caption.py`
    run the recorder and suppression on them)."""
    adapter = tiny_vlm_adapter(kind)
    text_type = kind.removeprefix("llava-")
    assert adapter.ffn_site.architecture.startswith(f"{text_type} (")
    assert adapter.neuron_module(adapter.model, 2) is adapter.model.model.language_model.layers[2].mlp.down_proj
    assert adapter.final_norm() is adapter.model.model.language_model.norm
