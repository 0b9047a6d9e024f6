"""Classical inpainting with OpenCV: Telea's fast marching method and Navier-Stokes (``cv2.inpaint``)."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint.base import Inpainter

METHODS: dict[str, int] = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class OpenCVInpainter(Inpainter):
    """``cv2.inpaint`` with method ``"telea"`` or ``"ns"``; ``radius`` = neighbourhood radius in pixels.

    Deterministic, no weights. Fills by smooth propagation of the surrounding colours: good for removing
    small and medium objects, smeared for large regions.
    """

    def __init__(self, method: str = "telea", radius: float = 5.0) -> None:
        if method not in METHODS:
            raise KneuronError(f"unknown OpenCV inpainting method {method!r}; known: {sorted(METHODS)}")
        if not radius > 0:
            raise KneuronError(f"inpainting radius must be > 0 pixels, got {radius}")
        self.name = method
        self.method = method
        self.radius = float(radius)

    def _fill(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # Each channel is filled from its own neighbours, so RGB vs BGR order does not matter.
        return cv2.inpaint(image, mask.astype(np.uint8) * 255, self.radius, METHODS[self.method])

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "radius": self.radius, "opencv": cv2.__version__}
