"""Mask helpers: union of instance masks and dilation by a margin in pixels."""
from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from kneuron.engine.errors import KneuronError


def union(masks: Iterable[np.ndarray], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Pixel-wise OR of masks ``[H, W]`` (bool or integer, non-zero = inside) -> bool ``[H, W]``.

    ``shape`` (H, W) is required when ``masks`` may be empty (the result is then all False); when given,
    every mask must have that shape.
    """
    out = None if shape is None else np.zeros(shape, dtype=bool)
    for index, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise KneuronError(f"mask {index} must be 2-D [H, W], got shape {list(mask.shape)}")
        if out is None:
            out = np.zeros(mask.shape, dtype=bool)
        if mask.shape != out.shape:
            raise KneuronError(f"mask {index} has shape {list(mask.shape)}, expected {list(out.shape)}")
        out |= mask.astype(bool, copy=False)
    if out is None:
        raise KneuronError("union of no masks needs the image shape")
    return out


def dilate(mask: np.ndarray, margin_px: float) -> np.ndarray:
    """Grow ``mask`` [H, W] by ``margin_px``: every pixel within Euclidean distance <= margin_px of the mask.

    Returns a new bool ``[H, W]``; margin 0 returns a copy, an empty mask stays empty.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise KneuronError(f"mask must be 2-D [H, W], got shape {list(mask.shape)}")
    if not margin_px >= 0:
        raise KneuronError(f"dilation margin must be >= 0 pixels, got {margin_px}")
    mask = mask.astype(bool)
    if margin_px == 0 or not mask.any() or mask.all():
        return mask.copy()
    # distance of every pixel to the nearest mask pixel (mask pixels are the zeros of the input)
    outside = np.where(mask, 0, 1).astype(np.uint8)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= margin_px


def removal_mask(masks: Iterable[np.ndarray], shape: tuple[int, int], margin_px: float) -> np.ndarray:
    """The region to inpaint for an object: union of its instance masks, dilated by ``margin_px``."""
    return dilate(union(masks, shape), margin_px)
