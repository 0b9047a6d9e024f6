"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``): image
splitting and a pixel-shuffle connector.

The image processor resizes the image (longest edge to ``size["longest_edge"]``, then up to multiples of the
tile size ``max_image_size["longest_edge"]``), cuts it into ``rows x cols`` tiles and appends a *global* image
(the whole image resized to one tile); without ``do_image_splitting`` only the global image is kept. The SigLIP
tower gives ``p x p`` patch features per tile; the connector's pixel shuffle turns every ``r x r`` block of them
(``r = scale_factor``) into one token, raster-ordered over an ``m x m`` grid (``m = p / r``), and projects it.
The prompt holds, as ``Idefics3Processor`` writes it, per tile ``<fake_token_around_image><row_i_col_j>`` + ``m²``
``<image>`` tokens (a newline after each row of tiles), then ``\\n<fake_token_around_image><global-img>`` + ``m²``
``<image>`` + ``<fake_token_around_image>``. The image tokens are the ``<image>`` positions only.

Pinned resolution (`kneuron.engine.models.hf_pinned`): a square image always gives the same ``k x k`` tiles, so images
are resized to that square (``k`` tiles of the tile size) first. `image_regions`: the heatmap grid is the
``k m x k m`` grid of the tiles' tokens; a global-image token covers the ``k x k`` cells of its part of the image.
Captions end at ``<end_of_utterance>``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageRegions, grid_boxes
from kneuron.engine.models.hf_pinned import PinnedResolutionAdapter

IDEFICS3_TEMPLATE = "User:<image>{instruction}<end_of_utterance>\nAssistant:"
SMOLVLM_TEMPLATE = "<|im_start|>User:<image>{instruction}<end_of_utterance>\nAssistant:"
FAKE_TOKEN, GLOBAL_TOKEN = "<fake_token_around_image>", "<global-img>"


class Idefics3Adapter(PinnedResolutionAdapter):
    """Idefics3: ``k x k`` tiles + a global image, each ``m x m`` pixel-shuffled tokens."""

    family = "idefics3"
    hf_class = "Idefics3ForConditionalGeneration"
    default_template = IDEFICS3_TEMPLATE
    text_model_path = "model.text_model"
    vision_tower_path = "model.vision_model"
    stop_tokens = ("<end_of_utterance>",)
    #: tiles per side (0 without splitting); tokens per tile side
    tiles: int
    tokens_per_side: int

    @property
    def tile_side(self) -> int:
        return int(self.image_processor.max_image_size["longest_edge"])

    def default_image_side(self) -> int:
        if not getattr(self.image_processor, "do_image_splitting", False):
            return self.tile_side
        longest = int(self.image_processor.size["longest_edge"])
        return math.ceil(longest / self.tile_side) * self.tile_side

    def process(self, images: Any) -> dict[str, Any]:
        """One image per row (``[[image], ...]``), with the tile rows and columns."""
        return dict(self.image_processor(images=[[image] for image in images], return_tensors="pt",
                                         return_row_col_info=True))

    def read_layout(self, probe: dict[str, Any]) -> None:
        rows, cols = int(probe["rows"][0][0]), int(probe["cols"][0][0])
        if rows != cols:
            raise KneuronError(f"{self.family} processor cut a square {self.image_side} px image into {rows}x{cols} "
                               "tiles")
        if self.tile_side != int(self.vision_config.image_size):
            raise KneuronError(f"{self.family} tile size {self.tile_side} px differs from the vision tower's "
                               f"{self.vision_config.image_size} px")
        self.tiles = rows
        patches = int(self.vision_config.image_size) // int(self.vision_config.patch_size)
        self.tokens_per_side = patches // int(self.config.scale_factor)
        frames = int(probe["pixel_values"].shape[1])
        if frames != self.tiles ** 2 + 1 and not (self.tiles == 0 and frames == 1):
            raise KneuronError(f"{self.family} processor made {frames} frames for {rows}x{cols} tiles")

    @property
    def image_seq_len(self) -> int:
        return self.tokens_per_side ** 2

    @property
    def n_image_tokens(self) -> int:
        return (self.tiles ** 2 + 1) * self.image_seq_len

    def image_tokens_text(self) -> str:
        image = self.tokenizer.convert_ids_to_tokens(self.image_token_id) * self.image_seq_len
        global_image = f"{FAKE_TOKEN}{GLOBAL_TOKEN}{image}{FAKE_TOKEN}"
        if self.tiles == 0:
            return global_image
        text = ""
        for row in range(self.tiles):
            text += "".join(f"{FAKE_TOKEN}<row_{row + 1}_col_{col + 1}>{image}" for col in range(self.tiles)) + "\n"
        return text + "\n" + global_image

    def image_regions(self) -> ImageRegions:
        m, k = self.tokens_per_side, self.tiles
        if k == 0:
            return ImageRegions(grid_boxes(m, m), (m, m))
        tiles = [grid_boxes(m, m, (r / k, c / k, (r + 1) / k, (c + 1) / k)) for r in range(k) for c in range(k)]
        return ImageRegions(torch.cat([*tiles, grid_boxes(m, m)]), (k * m, k * m))


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM: Idefics3's layout and prompt expansion (SmolLM2 text model)."""

    family = "smolvlm"
    hf_class = "SmolVLMForConditionalGeneration"
    default_template = SMOLVLM_TEMPLATE


__all__ = ["IDEFICS3_TEMPLATE", "Idefics3Adapter", "SMOLVLM_TEMPLATE", "SmolVLMAdapter"]
