"""Tiny random Qwen2-VL / Qwen2.5-VL, LLaVA-NeXT / OneVision, Idefics3 / SmolVLM and Gemma 3 models (built from
configs, nothing downloaded), their word-level tokenizers with each family's special tokens, and their image
processors (PIL backends: no torchvision), plus LLaVA with non-LLaMA gated text models (Mistral, Qwen2,
Qwen3, Gemma 2). Text models: 3 layers, d_model 64, d_ff 96, like `tests.helpers.hf_tiny`."""
from __future__ import annotations

from typing import Any

import torch
import transformers as tf

from kneuron.engine.models.gemma3 import GEMMA3_TEMPLATE, Gemma3Adapter
from kneuron.engine.models.hf_adapters import LLAVA_TEMPLATE, HFVLMAdapter, LlavaAdapter
from kneuron.engine.models.idefics3 import IDEFICS3_TEMPLATE, SMOLVLM_TEMPLATE, Idefics3Adapter, SmolVLMAdapter
from kneuron.engine.models.llava_next import (
    CHATML_TEMPLATE,
    MISTRAL_TEMPLATE,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
)
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from kneuron.engine.models.qwen2_vl import QWEN_TEMPLATE, Qwen2VLAdapter, Qwen25VLAdapter
from kneuron.engine.models.tokenizer import SPECIAL_TOKENS
from tests.helpers.tiny_models import WORDS
from tests.helpers.word_tokenizer import word_level_tokenizer

N_LAYERS, D_MODEL, D_FF = 3, 64, 96
INIT_RANGE = 0.2
#: every image is pinned to this side (px) in the tiny models
SIDE = 32

QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>")
IDEFICS_SPECIALS = ("<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>", "<|im_start|>",
                    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))
GEMMA_SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
LLAVA_SPECIALS = ("<image>", "<|im_start|>", "<|im_end|>", "<video>")

#: kind -> (adapter class, template, special tokens)
KINDS: dict[str, tuple[type[HFVLMAdapter], str, tuple[str, ...]]] = {
    "qwen2-vl": (Qwen2VLAdapter, QWEN_TEMPLATE, QWEN_SPECIALS),
    "qwen2.5-vl": (Qwen25VLAdapter, QWEN_TEMPLATE, QWEN_SPECIALS),
    "llava-next": (LlavaNextAdapter, MISTRAL_TEMPLATE, LLAVA_SPECIALS),
    "llava-onevision": (LlavaOnevisionAdapter, CHATML_TEMPLATE, LLAVA_SPECIALS),
    "idefics3": (Idefics3Adapter, IDEFICS3_TEMPLATE, IDEFICS_SPECIALS),
    "smolvlm": (SmolVLMAdapter, SMOLVLM_TEMPLATE, IDEFICS_SPECIALS),
    "gemma3": (Gemma3Adapter, GEMMA3_TEMPLATE, GEMMA_SPECIALS),
    "llava-mistral": (LlavaAdapter, LLAVA_TEMPLATE, ("<image>",)),
    "llava-qwen2": (LlavaAdapter, LLAVA_TEMPLATE, ("<image>",)),
    "llava-qwen3": (LlavaAdapter, LLAVA_TEMPLATE, ("<image>",)),
    "llava-gemma2": (LlavaAdapter, LLAVA_TEMPLATE, ("<image>",)),
}
VLM_KINDS = ("qwen2-vl", "qwen2.5-vl", "llava-next", "llava-onevision", "idefics3", "smolvlm", "gemma3")
TEXT_KINDS = ("llava-mistral", "llava-qwen2", "llava-qwen3", "llava-gemma2")
NEW_KINDS = VLM_KINDS + TEXT_KINDS
#: the tiny models' token roles: ``<pad>``, ``<unk>``, ``<s>`` (BOS), ``</s>`` (EOS)
WORD_ROLES = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def spread_weights(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> None:
    """Redraw every matrix-shaped weight from ``N(0, std)`` (seeded), in place: tiny random models at their usual
    init (0.02, BLIP-2's vision 1e-10 or Gemma 3's zero image projection) caption every image the same way."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def tiny_vlm_tokenizer(template: str, specials: tuple[str, ...]) -> tf.PreTrainedTokenizerFast:
    """Word-level tokenizer over the test words, the instruction and ``template``, plus ``specials`` (added as
    special tokens after the words). Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2 (BOS, prepended), ``</s>`` 3."""
    texts = [" ".join(WORDS), DEFAULT_INSTRUCTION, template.replace("<image>", " ")]
    return word_level_tokenizer(texts, SPECIAL_TOKENS, WORD_ROLES, 4096, bos_template=True, extra_specials=specials)


def _text(vocab: int, model_type: str = "llama") -> dict[str, Any]:
    out: dict[str, Any] = dict(model_type=model_type, vocab_size=vocab, hidden_size=D_MODEL, intermediate_size=D_FF,
                               num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                               initializer_range=INIT_RANGE, tie_word_embeddings=False)
    if model_type == "qwen3":
        out["head_dim"] = 16
    if model_type in ("gemma2", "gemma3_text"):
        out.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=512, final_logit_softcapping=None,
                   attn_logit_softcapping=None)
    if model_type in {"qwen2_vl_text", "qwen2_5_vl_text"}:
        out["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    return out


def tiny_config(kind: str, tok: tf.PreTrainedTokenizerFast) -> Any:
    """The tiny config of ``kind`` sized to ``tok``."""
    ids = tok.convert_tokens_to_ids
    vocab = len(tok)
    if kind in ("qwen2-vl", "qwen2.5-vl"):
        special = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                       vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        if kind == "qwen2-vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=D_MODEL, num_heads=4, patch_size=4, spatial_merge_size=2,
                          temporal_patch_size=2, initializer_range=INIT_RANGE)
            return tf.Qwen2VLConfig(text_config=_text(vocab, "qwen2_vl_text"), vision_config=vision, **special)
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=D_MODEL, num_heads=4,
                      patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                      fullatt_block_indexes=[1], initializer_range=INIT_RANGE)
        return tf.Qwen2_5_VLConfig(text_config=_text(vocab, "qwen2_5_vl_text"), vision_config=vision, **special)
    if kind in ("llava-next", "llava-onevision"):
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                      patch_size=8, initializer_range=INIT_RANGE)
        pinpoints = [[16, 32], [32, 16], [32, 32]]
        if kind == "llava-next":
            return tf.LlavaNextConfig(vision_config={"model_type": "clip_vision_model", **vision},
                                      text_config=_text(vocab, "mistral"), image_token_index=ids("<image>"),
                                      image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
                                      vision_feature_select_strategy="default")
        return tf.LlavaOnevisionConfig(vision_config={"model_type": "siglip_vision_model", **vision},
                                       text_config=_text(vocab, "qwen2"), image_token_index=ids("<image>"),
                                       video_token_index=ids("<video>"), image_grid_pinpoints=pinpoints,
                                       vision_feature_layer=-1, vision_feature_select_strategy="full",
                                       vision_aspect_ratio="anyres_max_9")
    if kind in ("idefics3", "smolvlm"):
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                      patch_size=4, initializer_range=INIT_RANGE)
        cls = tf.Idefics3Config if kind == "idefics3" else tf.SmolVLMConfig
        return cls(vision_config=vision, text_config=_text(vocab), image_token_id=ids("<image>"),
                   scale_factor=2, initializer_range=INIT_RANGE)
    if kind == "gemma3":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                      patch_size=4, vision_use_head=False, initializer_range=INIT_RANGE)
        return tf.Gemma3Config(vision_config=vision, text_config=_text(vocab, "gemma3_text"),
                               mm_tokens_per_image=16, boi_token_index=ids("<start_of_image>"),
                               eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"),
                               initializer_range=INIT_RANGE, tie_word_embeddings=False)
    if kind in TEXT_KINDS:
        text_type = kind.removeprefix("llava-")
        vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, image_size=32, patch_size=8, initializer_range=INIT_RANGE)
        return tf.LlavaConfig(vision_config=vision, text_config=_text(vocab, text_type),
                              image_token_id=ids("<image>"), vision_feature_layer=-1,
                              vision_feature_select_strategy="default", initializer_range=INIT_RANGE)
    raise ValueError(kind)


def tiny_image_processor(kind: str) -> Any:
    """The family's own image processor (PIL backend) at the tiny sizes."""
    if kind in ("qwen2-vl", "qwen2.5-vl"):
        return tf.Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                           size={"shortest_edge": 8 * 8, "longest_edge": SIDE * SIDE})
    if kind == "llava-next":
        return tf.LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                             image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    if kind == "llava-onevision":
        return tf.LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16},
                                                  image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    if kind in ("idefics3", "smolvlm"):
        cls = tf.Idefics3ImageProcessorPil if kind == "idefics3" else tf.SmolVLMImageProcessorPil
        return cls(size={"longest_edge": 32}, max_image_size={"longest_edge": 16}, do_image_splitting=True)
    if kind == "gemma3":
        return tf.Gemma3ImageProcessorPil(size={"height": SIDE, "width": SIDE})
    if kind in TEXT_KINDS:
        return tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    raise ValueError(kind)


def tiny_vlm_model(kind: str, tok: tf.PreTrainedTokenizerFast, seed: int = 0) -> Any:
    """A random tiny model of ``kind`` (fp32, eval, frozen)."""
    config = tiny_config(kind, tok)
    torch.manual_seed(seed)
    model = getattr(tf, KINDS[kind][0].hf_class)(config)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tiny_vlm_adapter(kind: str, seed: int = 0, **options: Any) -> HFVLMAdapter:
    """A random tiny adapter of ``kind`` (`NEW_KINDS`) with its image processor and ``max_new_tokens=8``."""
    cls, template, specials = KINDS[kind]
    tok = tiny_vlm_tokenizer(template, specials)
    model = tiny_vlm_model(kind, tok, seed=seed)
    spread_weights(model, seed=seed)
    return cls(model, tok, name=f"tiny-random-{kind}", image_processor=tiny_image_processor(kind),
               template=template, max_new_tokens=8, **options)


__all__ = ["KINDS", "NEW_KINDS", "SIDE", "TEXT_KINDS", "VLM_KINDS", "tiny_config", "tiny_image_processor",
           "tiny_vlm_adapter", "tiny_vlm_model", "tiny_vlm_tokenizer"]
