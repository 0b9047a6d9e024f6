"""The inpainter interface: fill the masked pixels of an RGB image, leave every other pixel as it was."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from kneuron.engine.errors import KneuronError


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB image; return it as a C-contiguous uint8 array ``[H, W, 3]``.

    Integer images whose values lie in 0..255 are converted to uint8; anything else (float, bool,
    out-of-range integers, grey or RGBA layouts) is rejected with a ``KneuronError``.
    """
    if not isinstance(image, np.ndarray):
        raise KneuronError(f"image must be a numpy array [H, W, 3] uint8, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise KneuronError(f"image must have shape [H, W, 3] (RGB), got {list(image.shape)}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.integer) and image.dtype != np.bool_:
        low, high = int(image.min()), int(image.max())
        if low < 0 or high > 255:
            raise KneuronError(f"image of dtype {image.dtype} has values in [{low}, {high}]; expected 0..255 for uint8")
        return np.ascontiguousarray(image.astype(np.uint8))
    raise KneuronError(
        f"image must be uint8 [H, W, 3] with values 0..255, got dtype {image.dtype} "
        "(for floats in [0, 1] use (image * 255).round().astype(np.uint8))"
    )


def check_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Validate a mask for an image of ``shape`` (H, W); return it as bool ``[H, W]`` (True = fill).

    Bool masks and integer masks (non-zero = fill) are accepted; an all-False mask is an error.
    """
    if not isinstance(mask, np.ndarray):
        raise KneuronError(f"mask must be a numpy array [H, W] bool, got {type(mask).__name__}")
    if mask.shape != tuple(shape):
        raise KneuronError(f"mask shape {list(mask.shape)} does not match image shape {list(shape)}")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise KneuronError(f"mask must be bool (or integer, non-zero = fill), got dtype {mask.dtype}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise KneuronError(f"empty mask: nothing to inpaint in an image of shape {list(shape)}")
    return mask


class Inpainter(ABC):
    """Removes the masked region of an image by filling it from its surroundings.

    Contract of ``inpaint``: input uint8 ``[H, W, 3]`` RGB and bool ``[H, W]`` mask (True = remove); output a
    new uint8 ``[H, W, 3]`` array equal to the input wherever the mask is False. Same inputs and same
    configuration give the same output.
    """

    name: str = ""

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill ``mask`` in ``image``; uint8 ``[H, W, 3]``, pixels outside the mask unchanged."""
        image = check_image(image)
        mask = check_mask(mask, image.shape[:2])
        filled = self._fill(image, mask)
        if filled.shape != image.shape or filled.dtype != np.uint8:
            raise RuntimeError(f"{self.name} inpainter returned {filled.dtype} {list(filled.shape)}")
        return np.where(mask[..., None], filled, image)

    @abstractmethod
    def _fill(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Method-specific fill of validated inputs: uint8 [H, W, 3], bool [H, W] -> uint8 [H, W, 3]."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that determines the output (for the runs table); no machine-specific paths."""
