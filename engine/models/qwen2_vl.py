"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

Dynamic resolution: the image processor resizes an image to multiples of ``patch_size * merge_size`` (28 px)
and cuts it into ``patch_size`` patches, ordered so that each ``merge_size x merge_size`` block is consecutive;
the vision tower's merger turns every block into one LLM image token, raster-ordered over the merged grid
``(grid_h / merge, grid_w / merge)`` from ``image_grid_thw`` (Qwen2.5-VL's window attention reorders patches
inside the tower and restores the order after the merger). Images are pinned to one square side (default 448
px: a 16 x 16 token grid, 256 tokens; `kneuron.engine.models.hf_pinned`), so ``image_grid_thw`` is the same for every
image and the adapter reads the grid from it once.

M-RoPE: the model computes its 3-D rotary positions itself from ``image_grid_thw`` and ``mm_token_type_ids``
(1 at image tokens), which the adapter passes; the *sequence* positions of the image tokens (what kneuron
records) are where ``input_ids`` holds ``<|image_pad|>``. Prompt: Qwen's chat format with the default system
message, ``<|vision_start|><|image_pad|> * n<|vision_end|>`` in the user turn (as ``Qwen2VLProcessor`` expands
it); captions end at ``<|im_end|>``.

Each image token is one 28 x 28 px block (2 x 2 patches): `image_regions` is the merged grid itself.
"""
from __future__ import annotations

from typing import Any

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageRegions, grid_boxes
from kneuron.engine.models.hf_pinned import PinnedResolutionAdapter, token_type_ids

QWEN_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>"
                 "{instruction}<|im_end|>\n<|im_start|>assistant\n")
QWEN_DEFAULT_SIDE = 448


class Qwen2VLAdapter(PinnedResolutionAdapter):
    """Qwen2-VL: merged-patch image tokens on a pinned square grid, M-RoPE inputs passed to the model."""

    family = "qwen2-vl"
    hf_class = "Qwen2VLForConditionalGeneration"
    default_template = QWEN_TEMPLATE
    vision_tower_path = "model.visual"
    stop_tokens = ("<|im_end|>",)
    grid: tuple[int, int, int]  # image_grid_thw of every image: (t, h, w) in patches
    merge: int

    def default_image_side(self) -> int:
        """448 px (rounded down to the 28 px merge factor), less when the processor's max pixels say so."""
        factor = int(self.vision_config.patch_size) * int(self.vision_config.spatial_merge_size)
        side = max(factor, QWEN_DEFAULT_SIDE // factor * factor)
        max_pixels = (getattr(self.image_processor, "size", None) or {}).get("longest_edge")
        while max_pixels and side > factor and side * side > int(max_pixels):
            side -= factor
        return side

    def read_layout(self, probe: dict[str, Any]) -> None:
        t, h, w = (int(v) for v in probe["image_grid_thw"][0])
        self.grid, self.merge = (t, h, w), int(self.vision_config.spatial_merge_size)
        patch = int(self.vision_config.patch_size)
        if (h * patch, w * patch) != (self.image_side, self.image_side):
            raise KneuronError(f"{self.family} image side {self.image_side} px is not kept by the image processor "
                               f"(it makes {h * patch}x{w * patch}): use a multiple of {patch * self.merge} px "
                               "within the processor's min/max pixels")
        if h % self.merge or w % self.merge or t != 1:
            raise KneuronError(f"{self.family} grid {t}x{h}x{w} does not merge by {self.merge}")

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of the merged image-token grid."""
        return self.grid[1] // self.merge, self.grid[2] // self.merge

    @property
    def n_image_tokens(self) -> int:
        rows, cols = self.token_grid
        return rows * cols

    @property
    def patches_per_image(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def image_tokens_text(self) -> str:
        token: str = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        return "<|vision_start|>" + token * self.n_image_tokens + "<|vision_end|>"

    def batch_size_of(self, pixel_values: torch.Tensor) -> int:
        """Qwen's pixels are ``[B * patches_per_image, C * T * p * p]``."""
        rows = int(pixel_values.shape[0])
        if rows % self.patches_per_image:
            raise KneuronError(f"{rows} patch rows are not a whole number of {self.patches_per_image}-patch images")
        return rows // self.patches_per_image

    def sequence_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image_grid_thw`` ``[B, 3]`` and ``mm_token_type_ids`` ``[B, T]`` (M-RoPE needs both)."""
        b = input_ids.shape[0]
        return {"image_grid_thw": torch.tensor([list(self.grid)] * b, dtype=torch.long),
                "mm_token_type_ids": token_type_ids(input_ids, self.image_token_id)}

    def image_regions(self) -> ImageRegions:
        rows, cols = self.token_grid
        return ImageRegions(grid_boxes(rows, cols), (rows, cols))


class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: the same layout and inputs (window attention stays inside the vision tower)."""

    family = "qwen2.5-vl"
    hf_class = "Qwen2_5_VLForConditionalGeneration"


__all__ = ["QWEN_TEMPLATE", "Qwen25VLAdapter", "Qwen2VLAdapter"]
