"""Tiny MiniGPT-4 architectures (official structure, scaled down) for tests and the embedded world."""
from __future__ import annotations

from kneuron.engine.models.minigpt4 import MiniGPT4Config, Variant


def tiny_config(variant: Variant, vocab_size: int, image_size: int = 64, patch_size: int = 8,
                vision_width: int = 64, vision_layers: int = 2, qformer_width: int = 64, num_query_tokens: int = 8,
                d_model: int = 128, d_ff: int = 256, n_layers: int = 4, n_heads: int = 4,
                pad_token_id: int = 0, bos_token_id: int = 2, eos_token_id: int = 3) -> MiniGPT4Config:
    """A MiniGPT-4 config with the official module layout and tiny sizes.

    Defaults: 64 px images, 8 px patches (8x8 grid), 8 Q-Former queries or 16 grouped-patch tokens, a 4-layer
    LLaMA with ``d_ff=256``.
    """
    vision = dict(hidden_size=vision_width, intermediate_size=vision_width * 4, num_hidden_layers=vision_layers,
                  num_attention_heads=4, image_size=image_size, patch_size=patch_size, qkv_bias=True,
                  layer_norm_eps=1e-6, initializer_range=0.02)  # HF default 1e-10 stalls training
    qformer = None
    if variant == "qformer":
        qformer = dict(hidden_size=qformer_width, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=qformer_width * 4, encoder_hidden_size=vision_width,
                       cross_attention_frequency=1, vocab_size=2, max_position_embeddings=64)
    llm = dict(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=n_layers,
               num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=512,
               pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
               tie_word_embeddings=False, rms_norm_eps=1e-6)
    return MiniGPT4Config(variant=variant, vision=vision, qformer=qformer, num_query_tokens=num_query_tokens,
                          llm=llm)
