"""`PinnedResolutionAdapter`: the base of the families whose image processor decides the image-token layout
from the image size (Qwen2-VL dynamic resolution, LLaVA-NeXT / OneVision anyres tiles, Idefics3 / SmolVLM
splitting, Gemma 3).

Pinned resolution
-----------------
kneuron runs the rows of a batch on one shared prompt (no padding; the same image positions in every row), so
every image must give the same number of image tokens. These adapters resize every image to one square side
(`PinnedResolutionAdapter.image_side`, a per-family default or the ``image_side`` option) before the family's
own image processor, which then lays it out exactly as it would any image of that size: grid from Qwen2-VL's
``image_grid_thw``, tiles and base image of LLaVA-NeXT, tiles and global image of Idefics3. The layout is read
once, at construction, from the processor's output for a blank image of that side (`probe`), and the prompt's
image placeholder is expanded the way the family's HF processor expands it (`image_tokens_text`). The square
resize squashes non-square images (as LLaVA-1.5 and Gemma 3 themselves do); it never crops, so every image
token's region (`image_regions`) is a box of the whole image.

Pixel tensors passed to `prepare` are this adapter's `pixel_values` output (the processor's layout: Qwen2-VL's
flattened patches ``[B * n_patches, C * T * p * p]``, LLaVA-NeXT's and Idefics3's tiles ``[B, n_tiles, 3, t, t]``,
Gemma 3's ``[B, 3, S, S]``); their first dimension concatenates batches.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
from PIL import Image
from torch import nn

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageConnector
from kneuron.engine.models.ffn_site import split_path, walk
from kneuron.engine.models.hf_adapters import IMAGE_MARKER, HFVLMAdapter


class PinnedResolutionAdapter(HFVLMAdapter):
    """An `HFVLMAdapter` whose images are resized to ``image_side`` x ``image_side`` before its image processor.

    Subclasses give `default_image_side`, `read_layout` (from one `probe` output), `image_tokens_text`,
    `n_image_tokens`, `image_regions` and, where the model needs them, `sequence_inputs`.
    """

    needs_image_processor = True
    vision_tower_path: str = "model.vision_tower"
    #: ``processor(images, **process_options)``: options every call passes (e.g. no pan-and-scan)
    process_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: nn.Module, tokenizer: Any, name: str | None = None, image_processor: Any = None,
                 instruction: str | None = None, template: str | None = None, max_new_tokens: int = 40,
                 image_side: int | None = None) -> None:
        if image_processor is None:
            raise KneuronError(f"{self.family} needs its image processor (preprocessor_config.json): it decides "
                               "the image-token layout")
        super().__init__(model, tokenizer, name, image_processor, instruction, template, max_new_tokens)
        self.image_side = int(image_side) if image_side else self.default_image_side()
        if self.image_side < 1:
            raise KneuronError(f"image_side must be a positive number of pixels, got {self.image_side}")
        self.read_layout(self.probe())

    # ------------------------------------------------------------------ layout (subclasses)
    def default_image_side(self) -> int:
        """The square side every image is resized to unless the ``image_side`` option says otherwise."""
        raise NotImplementedError

    def read_layout(self, probe: dict[str, Any]) -> None:
        """Store the layout (grid, tiles) from the processor's output for one blank image; check it."""
        raise NotImplementedError

    def image_tokens_text(self) -> str:
        """What replaces `IMAGE_MARKER` in the prompt: the image placeholder expanded as the HF processor does."""
        raise NotImplementedError

    # ------------------------------------------------------------------ images
    @property
    def vision_tower(self) -> nn.Module:
        return cast("nn.Module", walk(self.model, split_path(self.vision_tower_path)))

    def resize(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """RGB images resized (bicubic) to ``image_side`` x ``image_side``."""
        side = (self.image_side, self.image_side)
        return [image.convert("RGB").resize(side, Image.Resampling.BICUBIC) if image.size != side
                else image.convert("RGB") for image in images]

    def process(self, images: Sequence[Image.Image]) -> dict[str, Any]:
        """The image processor's output for pinned-size RGB images (``pixel_values`` and its layout fields)."""
        return dict(self.image_processor(images=list(images), return_tensors="pt", **self.process_options))

    def probe(self) -> dict[str, Any]:
        """The processor's output for one blank image of the pinned side (the layout every image gets)."""
        return self.process(self.resize([Image.new("RGB", (self.image_side, self.image_side))]))

    def pixel_values(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """The processor's pixels of the images resized to the pinned side; tensors pass through."""
        if isinstance(images, torch.Tensor):
            return images
        return cast("torch.Tensor", self.process(self.resize(list(images)))["pixel_values"])

    # ------------------------------------------------------------------ prompt
    def prompt_ids(self, instruction: str | None = None) -> list[int]:
        """Prompt token ids ``[prompt_length]``: the template with its `IMAGE_MARKER` replaced by
        `image_tokens_text`, tokenized at once (special tokens as the tokenizer adds them)."""
        instruction = instruction or self.instruction
        if instruction not in self._prompts:
            text = self.template.format(instruction=instruction)
            if IMAGE_MARKER not in text:
                raise ValueError(f"prompt template has no {IMAGE_MARKER}: {self.template!r}")
            text = text.replace(IMAGE_MARKER, self.image_tokens_text(), 1)
            ids = [int(i) for i in self.tokenizer(text, add_special_tokens=True)["input_ids"]]
            found = ids.count(self.image_token_id)
            if found != self.n_image_tokens:
                raise KneuronError(f"the prompt of {self.name!r} holds {found} image tokens, the image gives "
                                   f"{self.n_image_tokens} (does the template hold another {IMAGE_MARKER}?)")
            self._prompts[instruction] = ids
        return self._prompts[instruction]

    def image_connector(self) -> ImageConnector:
        """These families have no Q-Former: their image tokens map to image regions through `image_regions`."""
        raise KneuronError(f"model {self.name!r} ({self.family}) has no Q-Former: its image tokens map to image "
                           "regions through image_regions()")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_side": self.image_side}


def token_type_ids(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """``[B, T]`` int64: 1 at image placeholder tokens, 0 elsewhere (HF ``mm_token_type_ids`` convention)."""
    return (input_ids == image_token_id).long()


__all__ = ["PinnedResolutionAdapter", "token_type_ids"]
