"""LLaVA-NeXT (LLaVA-1.6) and LLaVA-OneVision (``LlavaNextForConditionalGeneration``,
``LlavaOnevisionForConditionalGeneration``): anyres tiling.

The image processor picks the best resolution among ``image_grid_pinpoints``, resizes (and pads) the image to it
and cuts it into ``k_h x k_w`` tiles of the vision tower's ``image_size``, plus a *base* image: the whole image
resized to one tile. Each tile gives ``s x s`` features (``s = image_size / patch_size``); the model packs them as

    [base: s x s raster] + [fine grid: (k_h s) rows x (k_w s + 1)]   (a learnt newline token ends every row)

after cutting the padding's rows or columns off the fine grid ("unpad"). OneVision also shrinks a fine grid of
more than ``anyres_max_N`` tiles bilinearly.

Pinned resolution (`kneuron.engine.models.hf_pinned`): images are resized to a *square pinpoint* (default the 2 x 2-tile
one, e.g. 672 px for LLaVA-1.6, 768 px for OneVision), so there is no padding to cut and every fine-grid token
is one exact cell of the image. `image_regions`: the fine grid is the heatmap grid; a base token covers the
``k x k`` cells of its part of the image; newline tokens cover none. A fine grid OneVision shrinks bilinearly
(a pinned side with more than ``N`` tiles) has no exact token -> region map: `image_regions` says so.

Prompts: ``[INST] <image>\\n{instruction} [/INST]`` for a Mistral text model (llava-v1.6-mistral), ChatML for
Qwen2 (OneVision), ``USER: <image>\\n{instruction} ASSISTANT:`` otherwise (Vicuna); ``<image>`` is expanded to
the image's token count as ``LlavaNextProcessor`` does.
"""
from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageRegions, grid_boxes
from kneuron.engine.models.hf_adapters import LLAVA_TEMPLATE
from kneuron.engine.models.hf_pinned import PinnedResolutionAdapter

MISTRAL_TEMPLATE = "[INST] <image>\n{instruction} [/INST]"
CHATML_TEMPLATE = "<|im_start|>user <image>\n{instruction}<|im_end|><|im_start|>assistant\n"
TEMPLATE_BY_TEXT_MODEL = {"mistral": MISTRAL_TEMPLATE, "qwen2": CHATML_TEMPLATE}


class LlavaNextAdapter(PinnedResolutionAdapter):
    """LLaVA-NeXT: base image + unpadded tile grid with row-end newline tokens."""

    family = "llava-next"
    hf_class = "LlavaNextForConditionalGeneration"
    default_template = LLAVA_TEMPLATE
    stop_tokens = ("<|im_end|>",)
    #: tiles per side of the pinned image; features per tile side; fine grid (rows, cols) after any shrinking
    tiles: int
    side_features: int
    fine: tuple[int, int]
    shrunk: bool = False

    def __init__(self, model: nn.Module, tokenizer: Any, name: str | None = None, image_processor: Any = None,
                 instruction: str | None = None, template: str | None = None, max_new_tokens: int = 40,
                 image_side: int | None = None) -> None:
        if not template:  # the chat format of the text model (llava-v1.6-mistral, OneVision's Qwen2, Vicuna)
            config: Any = model.config
            text_type = getattr(config.get_text_config(), "model_type", "")
            template = TEMPLATE_BY_TEXT_MODEL.get(text_type, self.default_template)
        super().__init__(model, tokenizer, name, image_processor, instruction, template, max_new_tokens, image_side)

    @property
    def tile_side(self) -> int:
        return int(self.vision_config.image_size)

    def square_pinpoints(self) -> list[int]:
        return sorted({int(h) for h, w in self.config.image_grid_pinpoints if int(h) == int(w)})

    def default_image_side(self) -> int:
        squares = self.square_pinpoints()
        if not squares:
            raise KneuronError(f"{self.family} model {self.name!r} has no square image_grid_pinpoints: kneuron "
                               "pins images to one square pinpoint")
        two = 2 * self.tile_side
        return two if two in squares else squares[0]

    def read_layout(self, probe: dict[str, Any]) -> None:
        if self.image_side not in self.square_pinpoints():
            raise KneuronError(f"{self.family} image side {self.image_side} px is not a square pinpoint of the model "
                               f"({self.square_pinpoints()}): other sides pad the image")
        self.tiles = self.image_side // self.tile_side
        self.side_features = self.tile_side // int(self.vision_config.patch_size)
        n_frames = int(probe["pixel_values"].shape[1])
        if n_frames != self.tiles ** 2 + 1:
            raise KneuronError(f"{self.family} processor made {n_frames} tiles for a {self.image_side} px image, "
                               f"expected {self.tiles ** 2} + 1 base")
        rows = cols = self.tiles * self.side_features
        self.fine = self.shrink(rows, cols)

    def shrink(self, rows: int, cols: int) -> tuple[int, int]:
        """The fine grid after the model's own resampling (none for LLaVA-NeXT)."""
        return rows, cols

    @property
    def n_image_tokens(self) -> int:
        rows, cols = self.fine
        return self.side_features ** 2 + rows * (cols + 1)

    def image_tokens_text(self) -> str:
        return cast("str", self.tokenizer.convert_ids_to_tokens(self.image_token_id) * self.n_image_tokens)

    def sequence_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image_sizes`` ``[B, 2]``: (height, width) of every (pinned) image."""
        return {"image_sizes": torch.tensor([[self.image_side, self.image_side]] * input_ids.shape[0])}

    def image_regions(self) -> ImageRegions:
        if self.shrunk:
            raise KneuronError(f"model {self.name!r} ({self.family}) resamples its {self.tiles}x{self.tiles}-tile "
                               f"grid bilinearly to {self.fine[0]}x{self.fine[1]}: no exact token -> region map "
                               "(pin a side with fewer tiles)")
        rows, cols = self.fine
        s = self.side_features
        boxes = torch.cat([grid_boxes(s, s), grid_boxes(rows, cols, newline=True)])
        return ImageRegions(boxes, (rows, cols))


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's layout (SigLIP, no CLS), the fine grid shrunk beyond ``anyres_max_N``."""

    family = "llava-onevision"
    hf_class = "LlavaOnevisionForConditionalGeneration"
    default_template = CHATML_TEMPLATE

    def shrink(self, rows: int, cols: int) -> tuple[int, int]:
        """``anyres_max_N``: ratio ``sqrt(rows cols / (N s^2))``; above 1.1 the grid is resized bilinearly."""
        max_tiles = int(str(self.config.vision_aspect_ratio).removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (max_tiles * self.side_features ** 2))
        if ratio <= 1.1:
            return rows, cols
        self.shrunk = True
        return int(rows // ratio), int(cols // ratio)


__all__ = ["CHATML_TEMPLATE", "LlavaNextAdapter", "LlavaOnevisionAdapter", "MISTRAL_TEMPLATE"]
