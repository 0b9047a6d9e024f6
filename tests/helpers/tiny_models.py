"""Tiny random models for tests (built from configs; nothing downloaded)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from kneuron.engine.models.minigpt4 import MiniGPT4
from kneuron.engine.models.minigpt4_adapter import MiniGPT4Adapter, ModelSpec
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION, TEMPLATES
from kneuron.engine.models.tiny import tiny_config
from kneuron.engine.models.tokenizer import build_word_tokenizer

WORDS = "a red blue green circle square star on the striped plain background and above below".split()


def tiny_tokenizer():
    texts = [" ".join(WORDS), DEFAULT_INSTRUCTION] + [t.text for t in TEMPLATES.values()]
    return build_word_tokenizer(texts)


def tiny_minigpt4(variant: str = "qformer", seed: int = 0, template: str | None = None) -> MiniGPT4Adapter:
    """A random tiny MiniGPT-4 adapter (fp32, CPU, frozen)."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    config = tiny_config(variant, vocab_size=len(tok), image_size=32, vision_width=32, qformer_width=32,
                         num_query_tokens=4, d_model=64, d_ff=96, n_layers=3)
    model = MiniGPT4(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    spec = ModelSpec(architecture=config, template=template or ("vicuna0" if variant == "qformer" else "llama2"),
                     answer_prefix="a", max_new_tokens=8)
    return MiniGPT4Adapter(model, tok, spec, name=f"tiny-random-{variant}")


def random_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
