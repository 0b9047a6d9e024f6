"""Rasterisation of the eight shapes of the embedded world, anti-aliased by supersampling.

A shape is a polygon in image pixel coordinates (x right, y down; pixel ``(row, col)`` covers
``[col, col + 1) x [row, row + 1)``). :func:`render_coverage` turns it into a coverage map
``float32 [H, W]`` in ``[0, 1]``: the fraction of each pixel the shape covers, computed by drawing
at ``supersample`` times the resolution and box-averaging. Deterministic (PIL + numpy only).
"""
from __future__ import annotations

import math
from typing import cast

import cv2
import numpy as np
from PIL import Image, ImageDraw

CATEGORIES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "heart", "hexagon", "diamond",
)

# Largest rotation (degrees, either way) that keeps a shape's identity: a square turned by 45 degrees
# would read as a diamond, a cross as an x, a triangle upside down; a circle does not change at all.
MAX_ROTATION_DEG: dict[str, float] = {
    "circle": 0.0, "square": 15.0, "triangle": 15.0, "star": 15.0,
    "cross": 15.0, "heart": 15.0, "hexagon": 15.0, "diamond": 10.0,
}

SUPERSAMPLE = 4


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2.0 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular(5, 1.0, -math.pi / 2)
    inner = _regular(5, 0.48, -math.pi / 2 + math.pi / 5)
    points = np.empty((10, 2))
    points[0::2], points[1::2] = outer, inner
    points[:, 1] += (1.0 - math.cos(math.pi / 5)) / 2  # centre the bounding box vertically
    return points


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return cast("np.ndarray", (points - (lo + hi) / 2) / ((hi - lo).max() / 2))


def _cross(arm: float = 0.32) -> np.ndarray:
    a = arm
    return np.array([
        (-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
        (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a),
    ], dtype=float)


# Unit polygons: centred on the origin, fitting [-1, 1]^2 (y down), vertices in drawing order.
UNIT_POLYGONS: dict[str, np.ndarray] = {
    "circle": _regular(72),
    "square": np.array([(-0.86, -0.86), (0.86, -0.86), (0.86, 0.86), (-0.86, 0.86)]),
    "triangle": np.array([(0.0, -0.866), (1.0, 0.866), (-1.0, 0.866)]),
    "star": _star(),
    "cross": _cross(),
    "heart": _heart(),
    "hexagon": _regular(6),
    "diamond": np.array([(0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)]),
}


def shape_polygon(category: str, center: tuple[float, float], diameter: float, rotation_deg: float) -> np.ndarray:
    """Vertices ``[n, 2]`` (x, y in pixels) of ``category`` scaled to ``diameter`` px across, rotated, moved."""
    theta = math.radians(rotation_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return cast("np.ndarray", UNIT_POLYGONS[category] @ rot.T * (diameter / 2.0) + np.asarray(center, dtype=float))


def render_coverage(
    polygon: np.ndarray, height: int, width: int, grow_px: float = 0.0, supersample: int = SUPERSAMPLE
) -> np.ndarray:
    """Coverage ``float32 [height, width]`` in [0, 1] of a filled polygon ``[n, 2]``.

    ``grow_px`` > 0 widens the shape by that many pixels all round (a disc dilation), used for outlines.
    Only a window around the polygon is drawn, so the cost does not grow with the image size.
    """
    coverage = np.zeros((height, width), dtype=np.float32)
    margin = grow_px + 1.0
    x0 = max(0, math.floor(polygon[:, 0].min() - margin))
    y0 = max(0, math.floor(polygon[:, 1].min() - margin))
    x1 = min(width, math.ceil(polygon[:, 0].max() + margin))
    y1 = min(height, math.ceil(polygon[:, 1].max() + margin))
    if x1 <= x0 or y1 <= y0:
        return coverage
    ss = supersample
    canvas = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    # PIL fills a pixel when its centre is inside; hi-res pixel k has its centre at (k + 0.5) / ss.
    points = (polygon - np.array([x0, y0], dtype=float)) * ss - 0.5
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=255)
    hi = np.asarray(canvas)
    radius = int(round(grow_px * ss))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        hi = cv2.dilate(hi, kernel)
    window = hi.reshape(y1 - y0, ss, x1 - x0, ss).astype(np.float32).mean(axis=(1, 3)) / 255.0
    coverage[y0:y1, x0:x1] = window
    return coverage
