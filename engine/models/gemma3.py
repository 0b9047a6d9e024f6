"""Gemma 3 (``Gemma3ForConditionalGeneration``): pooled SigLIP patches, bidirectional attention among image
tokens, a GELU-gated MLP.

The image processor resizes the image to the tower's square size (896 px; pan-and-scan is turned off: its crops
would add image blocks); SigLIP gives a ``P x P`` patch grid (64 x 64), average-pooled in ``P/g x P/g`` blocks to
``g x g = mm_tokens_per_image`` tokens (16 x 16 = 256), raster-ordered. `image_regions` is that ``g x g`` grid.
The prompt holds ``\\n\\n<start_of_image>`` + 256 ``<image_soft_token>`` + ``<end_of_image>\\n\\n`` where the
template has ``<image>`` (``Gemma3Processor``'s expansion). ``token_type_ids`` (1 at image tokens) is passed so
the model builds its attention mask with the image tokens attending to each other both ways; text stays causal,
so teacher-forced tokens appended after the prompt still cannot change the prompt's logits.

Neuron site: Gemma's MLP is ``down_proj(gelu_tanh(gate_proj(x)) * up_proj(x))``: the same gated shape, found by
structure. Gemma 3's logits have no final soft-capping (``final_logit_softcapping`` None), so
``final_norm(x) @ W_U^T`` is the logit lens (where a checkpoint caps, the cap is monotone: token rankings agree).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageRegions, grid_boxes
from kneuron.engine.models.hf_pinned import PinnedResolutionAdapter, token_type_ids

GEMMA3_TEMPLATE = "<start_of_turn>user\n<image>{instruction}<end_of_turn>\n<start_of_turn>model\n"


class Gemma3Adapter(PinnedResolutionAdapter):
    """Gemma 3: ``g x g`` pooled image tokens, bidirectional image attention via ``token_type_ids``."""

    family = "gemma3"
    hf_class = "Gemma3ForConditionalGeneration"
    default_template = GEMMA3_TEMPLATE
    stop_tokens = ("<end_of_turn>",)
    process_options: ClassVar[dict[str, Any]] = {"do_pan_and_scan": False}
    tokens_per_side: int

    def default_image_side(self) -> int:
        return int(self.image_processor.size["height"])

    def read_layout(self, probe: dict[str, Any]) -> None:
        n = int(self.config.mm_tokens_per_image)
        side = int(round(n ** 0.5))
        patches = int(self.vision_config.image_size) // int(self.vision_config.patch_size)
        if side * side != n or patches % side:
            raise KneuronError(f"{self.family}: {n} image tokens do not pool a {patches}x{patches} patch grid")
        self.tokens_per_side = side
        shape = tuple(probe["pixel_values"].shape[1:])
        size = int(self.vision_config.image_size)
        if shape != (3, size, size):
            raise KneuronError(f"{self.family} processor made pixels {shape}, the vision tower reads (3, {size}, "
                               f"{size})")

    @property
    def n_image_tokens(self) -> int:
        return self.tokens_per_side ** 2

    def image_tokens_text(self) -> str:
        name = self.tokenizer.convert_ids_to_tokens
        boi, eoi = name(int(self.config.boi_token_index)), name(int(self.config.eoi_token_index))
        return f"\n\n{boi}{name(self.image_token_id) * self.n_image_tokens}{eoi}\n\n"

    def sequence_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``token_type_ids`` ``[B, T]``: 1 at image tokens (the bidirectional block of the attention mask)."""
        return {"token_type_ids": token_type_ids(input_ids, self.image_token_id)}

    def image_regions(self) -> ImageRegions:
        g = self.tokens_per_side
        return ImageRegions(grid_boxes(g, g), (g, g))


__all__ = ["GEMMA3_TEMPLATE", "Gemma3Adapter"]
