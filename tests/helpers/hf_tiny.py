"""Tiny random Hugging Face LLaVA / BLIP-2 / InstructBLIP models with a LLaMA text model (built from configs;
nothing downloaded), their word-level tokenizers, and helpers to save them as model folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from kneuron.engine.models.hf_adapters import (
    ADAPTERS,
    BLIP2_TEMPLATE,
    INSTRUCTBLIP_TEMPLATE,
    LLAVA_TEMPLATE,
    QFORMER_TOKENIZER_DIR,
    HFVLMAdapter,
)
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from kneuron.engine.models.tokenizer import SPECIAL_TOKENS, build_word_tokenizer
from tests.helpers.hf_tiny_vlm import NEW_KINDS, WORD_ROLES, spread_weights, tiny_vlm_adapter
from tests.helpers.tiny_models import WORDS, tiny_minigpt4
from tests.helpers.word_tokenizer import word_level_tokenizer

FAMILIES = ("llava", "blip-2", "instructblip")
IMAGE_SIZE, PATCH_SIZE = 32, 8  # 4x4 = 16 patches
N_QUERY = 6
N_LAYERS, D_MODEL, D_FF = 3, 64, 96
#: init scale large enough that random models give varied (non-degenerate) greedy captions
INIT_RANGE = 0.2


def tiny_hf_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the test words and all prompt templates, plus the special ``<image>`` token.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2 (BOS, prepended when ``add_special_tokens``), ``</s>`` 3 (EOS);
    ``<image>`` is the last id. Decoding joins words with spaces.
    """
    texts = [" ".join(WORDS)] + [t.format(instruction=DEFAULT_INSTRUCTION).replace("<image>", " ")
                                 for t in (LLAVA_TEMPLATE, BLIP2_TEMPLATE, INSTRUCTBLIP_TEMPLATE)]
    return word_level_tokenizer(texts, SPECIAL_TOKENS, WORD_ROLES, 512, bos_template=True, extra_specials=("<image>",))


def tiny_qformer_tokenizer():
    """Word-level tokenizer for InstructBLIP's Q-Former text input (no special tokens added)."""
    return build_word_tokenizer([" ".join(WORDS), DEFAULT_INSTRUCTION])


def _llama(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                       bos_token_id=2, eos_token_id=3, initializer_range=INIT_RANGE, tie_word_embeddings=False)


def _vision(cls):  # noqa: ANN001
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, initializer_range=INIT_RANGE)


def tiny_hf_model(family: str, tokenizer, qformer_vocab: int = 0, seed: int = 0):  # noqa: ANN001
    """A random tiny model of ``family`` (fp32, eval, frozen) sized to ``tokenizer``."""
    torch.manual_seed(seed)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text = _llama(len(tokenizer))
    if family == "llava":
        cfg = LlavaConfig(vision_config=_vision(CLIPVisionConfig), text_config=text, image_token_id=image_id,
                          vision_feature_layer=-1, vision_feature_select_strategy="default",
                          initializer_range=INIT_RANGE)
        model = LlavaForConditionalGeneration(cfg)
    elif family == "blip-2":
        q = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               encoder_hidden_size=32, vocab_size=8, initializer_range=INIT_RANGE)
        cfg = Blip2Config(vision_config=_vision(Blip2VisionConfig).to_dict(), qformer_config=q.to_dict(),
                          text_config=text.to_dict(), num_query_tokens=N_QUERY, image_token_index=image_id,
                          initializer_range=INIT_RANGE)
        model = Blip2ForConditionalGeneration(cfg)
    elif family == "instructblip":
        q = InstructBlipQFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, encoder_hidden_size=32, vocab_size=qformer_vocab,
                                      pad_token_id=0, initializer_range=INIT_RANGE)
        cfg = InstructBlipConfig(vision_config=_vision(InstructBlipVisionConfig).to_dict(), qformer_config=q.to_dict(),
                                 text_config=text.to_dict(), num_query_tokens=N_QUERY, image_token_index=image_id,
                                 initializer_range=INIT_RANGE)
        model = InstructBlipForConditionalGeneration(cfg)
    else:
        raise ValueError(family)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tiny_image_processor(family: str):
    """The family's own image processor at the tiny size (PIL backend: no torchvision needed)."""
    if family == "llava":
        return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                     crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def tiny_hf_adapter(family: str, seed: int = 0, image_processor: bool = False) -> HFVLMAdapter:
    """A random tiny adapter of ``family`` with ``max_new_tokens=8``; the fallback preprocessor unless
    ``image_processor``."""
    tok = tiny_hf_tokenizer()
    extra = {}
    qvocab = 0
    if family == "instructblip":
        extra["qformer_tokenizer"] = tiny_qformer_tokenizer()
        qvocab = len(extra["qformer_tokenizer"])
    model = tiny_hf_model(family, tok, qformer_vocab=qvocab, seed=seed)
    processor = tiny_image_processor(family) if image_processor else None
    return ADAPTERS[family](model, tok, name=f"tiny-random-{family}", image_processor=processor,
                            max_new_tokens=8, **extra)


def varied_images(n: int, size: int = IMAGE_SIZE, seed: int = 0) -> list[Image.Image]:
    """``n`` visibly different RGB images (random base colour, gradient direction and noise level), so tiny
    random models give image-dependent outputs."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    out = []
    for _ in range(n):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        direction = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
        noise = rng.normal(0, rng.uniform(5, 60), (size, size, 3)).astype(np.float32)
        pixels = colour * (0.3 + 0.7 * direction) + noise
        out.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return out


def save_hf_folder(adapter: HFVLMAdapter, folder: str | Path, image_processor: bool = True) -> Path:
    """Write ``adapter`` as a Hugging Face folder (weights, config, tokenizer, optional image processor,
    ``qformer_tokenizer/`` for InstructBLIP)."""
    folder = Path(folder)
    adapter.model.save_pretrained(folder)
    adapter.tokenizer.save_pretrained(folder)
    if image_processor:
        tiny_image_processor(adapter.family).save_pretrained(folder)
    qtok = getattr(adapter, "qformer_tokenizer", None)
    if qtok is not None:
        qtok.save_pretrained(folder / QFORMER_TOKENIZER_DIR)
    return folder


# ---------------------------------------------------------------------- every tiny adapter kind, for shared tests
MINIGPT4_KINDS = ("minigpt4-qformer", "minigpt4-patch")
#: + Qwen2-VL / 2.5-VL, LLaVA-NeXT / OneVision, Idefics3 / SmolVLM, Gemma 3, LLaVA with Mistral / Qwen2 / Gemma 2
ALL_KINDS = MINIGPT4_KINDS + FAMILIES + NEW_KINDS


def tiny_adapter(kind: str, seed: int = 0):
    """A tiny random adapter of any kind (`ALL_KINDS`) with image-dependent greedy captions (8 new tokens)."""
    if kind in MINIGPT4_KINDS:
        adapter = tiny_minigpt4(kind.split("-", 1)[1], seed=seed)
        spread_weights(adapter.model, seed=seed)
        return adapter
    if kind in NEW_KINDS:
        return tiny_vlm_adapter(kind, seed=seed)
    return tiny_hf_adapter(kind, seed=seed)
