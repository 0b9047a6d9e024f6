"""MiniGPT-4's image preprocessing (``Blip2ImageEvalProcessor``): bicubic resize, no crop, CLIP normalisation."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocessor:
    """RGB PIL images -> ``pixel_values [B, 3, size, size]`` float32."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = []
        for image in images:
            rgb = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
            arrays.append(np.asarray(rgb, dtype=np.float32) / 255.0)
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [B, 3, H, W]
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (batch - mean) / std
