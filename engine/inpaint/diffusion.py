"""Learned inpainting with a diffusers inpainting pipeline (Stable Diffusion inpainting and relatives).

The pipeline is loaded with ``diffusers.AutoPipelineForInpainting`` from ``model``: a local folder written by
``save_pretrained`` (loaded with ``local_files_only``) or a hub id such as
``"stable-diffusion-v1-5/stable-diffusion-inpainting"`` (downloaded by diffusers on the user's machine).
diffusers and torch are imported only when the pipeline is first needed.

Per call: the image is resized to the nearest multiple of 8 on each side (optionally first scaled so the
longer side is at most ``max_side``), inpainted with a fresh ``torch.Generator`` seeded with ``seed`` (so
the output depends only on the inputs and the configuration, not on call order), resized back, and
pasted into the original so that every pixel outside the mask keeps its original value.
"""
from __future__ import annotations

import importlib.metadata
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint.base import Inpainter

if TYPE_CHECKING:  # pragma: no cover
    import torch

DTYPES = ("float32", "float16", "bfloat16")


def _multiple_of_8(value: float) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) the pipeline runs at: optional downscale to ``max_side``, then multiples of 8."""
    scale = 1.0
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
    return _multiple_of_8(height * scale), _multiple_of_8(width * scale)


class DiffusionInpainter(Inpainter):
    """Inpainting with a diffusers pipeline.

    model: local pipeline folder or hub id. prompt / negative_prompt: text conditioning (default
    "background": fill with whatever surrounds the object). steps: denoising steps. guidance_scale:
    classifier-free guidance (<= 1 disables it). strength: 1.0 = ignore the masked content entirely.
    seed: generator seed, reused for every image. device / dtype: where and how the pipeline runs.
    max_side: downscale images whose longer side exceeds this before inpainting (None = keep size).
    """

    name = "sd"

    def __init__(
        self,
        model: str | None = None,
        prompt: str = "background",
        negative_prompt: str | None = None,
        steps: int = 25,
        guidance_scale: float = 7.5,
        strength: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
        max_side: int | None = None,
    ) -> None:
        if not model:
            raise KneuronError("the sd inpainter needs model=<local pipeline folder or hub id>")
        if int(steps) < 1:
            raise KneuronError(f"sd inpainting steps must be >= 1, got {steps}")
        if not 0.0 < float(strength) <= 1.0:
            raise KneuronError(f"sd inpainting strength must be in (0, 1], got {strength}")
        if dtype not in DTYPES:
            raise KneuronError(f"unknown dtype {dtype!r} for the sd inpainter; known: {list(DTYPES)}")
        if max_side is not None and int(max_side) < 8:
            raise KneuronError(f"max_side must be >= 8 pixels, got {max_side}")
        self.model = str(model)
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.strength = float(strength)
        self.seed = int(seed)
        self.device = device
        self.dtype = dtype
        self.max_side = None if max_side is None else int(max_side)
        self._pipeline: Any = None

    @property
    def model_id(self) -> str:
        """The hub id, or the folder name of a local pipeline (no machine-specific path)."""
        if os.path.isdir(self.model):
            return os.path.basename(os.path.normpath(self.model))
        return self.model

    def config(self) -> dict[str, Any]:

        return {
            "name": self.name, "model": self.model_id, "prompt": self.prompt,
            "negative_prompt": self.negative_prompt, "steps": self.steps,
            "guidance_scale": self.guidance_scale, "strength": self.strength, "seed": self.seed,
            "dtype": self.dtype, "max_side": self.max_side,
            "diffusers": _diffusers_version(),
        }

    def _load(self) -> Any:
        if self._pipeline is not None:
            return self._pipeline
        import torch

        _diffusers_version()
        from diffusers import AutoPipelineForInpainting

        from kneuron.engine.models.hub import hub_cache, hub_offline, parse_hub_id

        local = os.path.isdir(self.model)
        hub = None if local else parse_hub_id(self.model)
        offline = local or hub_offline()
        where: dict[str, Any] = {} if hub is None else {"revision": hub.revision, "cache_dir": hub_cache()}
        try:
            with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype; older lack dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipeline = AutoPipelineForInpainting.from_pretrained(
                    self.model if hub is None else hub.repo, torch_dtype=getattr(torch, self.dtype),
                    local_files_only=offline, safety_checker=None, requires_safety_checker=False, **where,
                )
        except (OSError, ValueError, KeyError) as error:
            if hub is not None and offline:
                raise KneuronError(f"inpainting pipeline {hub}: not in the Hugging Face cache {hub_cache()} and "
                                   f"HF_HUB_OFFLINE is set; fetch it first: {hub.fetch_hint()}") from None
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise KneuronError(f"cannot load inpainting pipeline {self.model!r}: {first_line}") from error
        pipeline = pipeline.to(self.device)
        pipeline.set_progress_bar_config(disable=True)
        self._pipeline = pipeline
        return pipeline

    def _generator(self) -> torch.Generator:
        import torch

        # A CPU generator gives the same noise on every device.
        return torch.Generator(device="cpu").manual_seed(self.seed)

    def _fill(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        from PIL import Image

        pipeline = self._load()
        height, width = image.shape[:2]
        work_h, work_w = working_size(height, width, self.max_side)
        pil_image = Image.fromarray(image).resize((work_w, work_h), Image.Resampling.BICUBIC)
        pil_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize((work_w, work_h), Image.Resampling.NEAREST)
        if not np.asarray(pil_mask).any():  # a sliver that vanished in the downscale
            pil_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize((work_w, work_h), Image.Resampling.BOX)
            pil_mask = pil_mask.point(lambda value: 255 if value > 0 else 0)
        result = pipeline(
            prompt=self.prompt, negative_prompt=self.negative_prompt, image=pil_image, mask_image=pil_mask,
            height=work_h, width=work_w, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
            strength=self.strength, generator=self._generator(), output_type="np",
        ).images[0]  # float [work_h, work_w, 3] in [0, 1]
        filled = (np.clip(result, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if (work_h, work_w) != (height, width):
            filled = np.asarray(Image.fromarray(filled).resize((width, height), Image.Resampling.BICUBIC))
        return np.ascontiguousarray(filled)


def _diffusers_version() -> str:
    """The installed diffusers version; `KneuronError` saying how to install it when it is missing."""
    try:
        return importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        raise KneuronError("the sd inpainter needs diffusers: pip install 'kneuron[sd]'") from None
