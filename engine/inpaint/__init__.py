"""Object removal for stage 1: fill a (dilated) object mask so the concept is gone from the image.

``get_inpainter(name, **options)``: ``telea`` (default) and ``ns`` run ``cv2.inpaint`` (no weights);
``sd`` runs a diffusers inpainting pipeline from ``model=<folder or hub id>``.
"""
from __future__ import annotations

from typing import Any, cast

from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint.base import Inpainter
from kneuron.engine.inpaint.masks import dilate, removal_mask, union

INPAINTERS: tuple[str, ...] = ("telea", "ns", "sd")
DEFAULT_INPAINTER = "telea"


def get_inpainter(name: str = DEFAULT_INPAINTER, **options: Any) -> Inpainter:
    """Build the inpainter called ``name`` with its ``options`` (constructor keywords)."""
    if name in ("telea", "ns"):
        from kneuron.engine.inpaint.opencv import OpenCVInpainter

        factory: Any = lambda **kw: OpenCVInpainter(method=name, **kw)  # noqa: E731
    elif name == "sd":
        from kneuron.engine.inpaint.diffusion import DiffusionInpainter

        factory = DiffusionInpainter
    else:
        raise KneuronError(f"unknown inpainter {name!r}; known: {list(INPAINTERS)}")
    try:
        return cast("Inpainter", factory(**options))
    except TypeError as error:
        raise KneuronError(f"bad options for inpainter {name!r}: {error}") from error


__all__ = ["DEFAULT_INPAINTER", "INPAINTERS", "Inpainter", "dilate", "get_inpainter", "removal_mask", "union"]
