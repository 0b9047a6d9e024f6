"""The embedded shapes world: a deterministic, procedurally generated dataset in MS COCO 2017 layout.

Each RGB image (``image_size`` px square) shows 1-3 filled, anti-aliased shapes of distinct categories
(:data:`CATEGORIES`, COCO ids 1..8, supercategory ``"shape"``), each with a distinct colour
(:data:`COLORS`) and a size class (:data:`SIZES`), on one of :data:`BACKGROUNDS`. Later objects occlude
earlier ones, but every object keeps at least :data:`MIN_VISIBLE_FRACTION` of its area visible; the
instance mask is the visible part. Where an object's colour is too close to what lies under it, it gets
a thin black or white outline (part of its mask) so it stays visible.

Layout written by :func:`generate_world`::

    out_dir/world.json                           manifest: generator, config, counts, photos used
    out_dir/{train,val,test}/<image_id:012d>.png
    out_dir/annotations/instances_{split}.json   COCO instances, masks as compressed RLE
    out_dir/annotations/captions_{split}.json    COCO captions, captions_per_image per image

Everything is a function of the config: image ``i`` of split ``s`` uses the random generator seeded
with ``(seed, s, i)``, so the val/test images do not depend on ``n_train``. JSON is written with
sorted keys and no timestamps, so regenerating gives byte-identical files.

Splits on demand: ``generate_world(out, config, splits=("test",))`` / ``ensure_world(..., splits=...)`` write
only the named splits (the demo needs test, ``kneuron train`` train); a split's files are the same bytes
whichever splits are generated and in which order. ``world.json`` lists the finished splits under ``splits``
while some are missing (``complete: false``); once every split is there it is exactly the manifest of a world
generated in one go (``complete: true``, no ``splits`` key).
Image ids: train 1_000_001.., val 2_000_001.., test 3_000_001..; annotation id = image_id * 10 + k
(k = 1.. in drawing order); caption id = image_id * 10 + j (j = 0..).

The module has one job: turning a `WorldConfig` into that folder. Placement, occlusion, outlines, captions
and the COCO files all read the same per-image draw and the same config, so they stay together (the shape
geometry itself lives in `kneuron.engine.data.shapes`).
"""
from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from kneuron.engine.data.shapes import CATEGORIES, MAX_ROTATION_DEG, render_coverage, shape_polygon
from kneuron.engine.errors import KneuronError
from kneuron.engine.runtime.replace_guard import check_not_protected

__all__ = [
    "BACKGROUNDS", "CATEGORIES", "COLORS", "COLOR_RGB", "SIZES", "SPLITS", "WorldConfig", "WorldObject",
    "caption_vocabulary", "check_world_target", "ensure_world", "generate_world", "read_world_manifest", "relation",
    "render_world_image",
    "world_captions", "world_config_of", "world_splits",
]

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (250, 225, 30),
    "purple": (145, 45, 185),
    "orange": (255, 135, 0),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "striped", "noisy", "photo")
SPLITS: tuple[str, ...] = ("train", "val", "test")
CATEGORY_IDS: dict[str, int] = {name: index + 1 for index, name in enumerate(CATEGORIES)}

# Object extent (px across) per size class at 64 px; scaled linearly with image_size.
SIZE_RANGE_AT_64: dict[str, tuple[float, float]] = {"small": (14.0, 18.0), "large": (24.0, 30.0)}
# With a layout, object extent as a fraction of the cell pitch (objects stay inside their cell).
SIZE_RANGE_OF_CELL: dict[str, tuple[float, float]] = {"small": (0.62, 0.72), "large": (0.82, 0.92)}
MIN_VISIBLE_FRACTION = 0.75
SPLIT_ID_BASE: dict[str, int] = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}
MANIFEST_NAME = "world.json"
GENERATOR = "kneuron.world"
GENERATOR_VERSION = 1
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
N_TEMPLATES = 5

# An object needs an outline when more than OUTLINE_SHARE of the pixels under it are closer than
# CONTRAST_MIN (Euclidean RGB distance) to its colour.
CONTRAST_MIN = 90.0
OUTLINE_SHARE = 0.10
# Photos bundled with scikit-image that load without pooch or a network.
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
    "camera", "brick", "grass", "gravel", "coins",
)
PHOTO_SIDE = 256  # photos are shrunk once so their short side is this many px


@dataclass(frozen=True)
class WorldConfig:
    """What a world is a function of. ``max_objects`` is at most 4 (all must fit, mostly visible)."""

    seed: int = 0
    image_size: int = 128
    n_train: int = 8000
    n_val: int = 300
    n_test: int = 300
    min_objects: int = 1
    max_objects: int = 3
    captions_per_image: int = 5
    #: objects sit in distinct cells of a ``layout_cells`` x ``layout_cells`` grid (centre +- ``jitter_px``);
    #: 0 places them anywhere. A tiny ViT trained from scratch (no translation equivariance) learns shapes
    #: from a few thousand images only when their positions repeat.
    layout_cells: int = 4
    jitter_px: int = 1

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise KneuronError(f"world config: {field.name} must be an integer, got {value!r}")
        if self.seed < 0:
            raise KneuronError(f"world config: seed must be >= 0, got {self.seed}")
        if self.image_size < 32:
            raise KneuronError(f"world config: image_size must be >= 32 px, got {self.image_size}")
        if min(self.n_train, self.n_val, self.n_test) < 0:
            raise KneuronError("world config: n_train, n_val and n_test must be >= 0")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise KneuronError(
                f"world config: need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}..{self.max_objects}"
            )
        if self.layout_cells and self.layout_cells ** 2 < self.max_objects:
            raise KneuronError(f"world config: a {self.layout_cells}x{self.layout_cells} layout cannot hold "
                               f"{self.max_objects} objects")
        if self.layout_cells < 0 or self.jitter_px < 0:
            raise KneuronError("world config: layout_cells and jitter_px must be >= 0")
        if not 3 <= self.captions_per_image <= N_TEMPLATES:
            raise KneuronError(
                f"world config: captions_per_image must be in 3..{N_TEMPLATES}, got {self.captions_per_image}"
            )

    def n_images(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


@dataclass
class WorldObject:
    """One drawn object. Masks are ``bool [H, W]``: ``full_mask`` before occlusion, ``visible_mask`` after."""

    category: str
    color: str
    size: str
    center: tuple[float, float]  # (x, y) px
    diameter: float  # px across, before rotation
    rotation_deg: float
    outline: str | None  # colour of the outline ring ("black"/"white") or None
    full_mask: np.ndarray
    visible_mask: np.ndarray

    def polygon(self) -> np.ndarray:
        """Vertices ``[n, 2]`` (x, y px) of the filled shape (without outline)."""
        return shape_polygon(self.category, self.center, self.diameter, self.rotation_deg)


def outline_width(image_size: int) -> float:
    """Outline ring width in px: 1 px at 64 px, scaled with the image size."""
    return max(1.0, image_size / 64.0)


def object_coverages(obj: WorldObject, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(fill, total) coverage ``float32 [H, W]`` of an object; total includes its outline ring if any."""
    fill = render_coverage(obj.polygon(), image_size, image_size)
    if obj.outline is None:
        return fill, fill
    return fill, render_coverage(obj.polygon(), image_size, image_size, grow_px=outline_width(image_size))


# ----------------------------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """The bundled scikit-image photos that load offline, as ``uint8 [h, w, 3]``, short side PHOTO_SIDE px."""
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        try:
            array = np.asarray(getattr(skimage.data, name)())
        except (ImportError, OSError, ValueError, AttributeError):  # needs pooch / a download here
            continue
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        image = Image.fromarray(np.ascontiguousarray(array[:, :, :3]).astype(np.uint8))
        scale = PHOTO_SIDE / min(image.size)
        if scale < 1:
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
            )
        photos.append((name, np.asarray(image)))
    if not photos:
        raise KneuronError("no scikit-image sample photo could be loaded for the 'photo' background")
    return tuple(photos)


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour ``float32 [3]`` (0..255), so that the saturated object colours stand out."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.08, 0.45), rng.uniform(0.3, 0.85))
    return np.array(rgb, dtype=np.float32) * 255.0


def _background(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A background ``float32 [size, size, 3]`` (0..255) of the given kind."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if kind == "plain":
        return np.broadcast_to(_muted_color(rng), (size, size, 3)).copy()
    if kind == "gradient":
        start, end = _muted_color(rng), _muted_color(rng)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        t = (xs - size / 2) * math.cos(angle) + (ys - size / 2) * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return cast("np.ndarray", start * (1.0 - t[:, :, None]) + end * t[:, :, None])
    if kind == "striped":
        first = _muted_color(rng)
        second = _muted_color(rng)
        while np.linalg.norm(first - second) < 60.0:
            second = _muted_color(rng)
        period = rng.uniform(6.0, 12.0) * size / 64.0
        angle = math.radians(float(rng.choice([0.0, 45.0, 90.0, 135.0])))
        u = xs * math.cos(angle) + ys * math.sin(angle) + rng.uniform(0.0, period)
        stripes = (np.mod(u, period) < period / 2)[:, :, None]
        return np.where(stripes, first, second).astype(np.float32)
    if kind == "noisy":
        noise = rng.normal(0.0, 28.0, size=(size, size, 3)).astype(np.float32)
        return np.clip(_muted_color(rng) + noise, 0.0, 255.0)
    if kind == "photo":
        photos = load_photos()
        _, photo = photos[int(rng.integers(len(photos)))]
        height, width = photo.shape[:2]
        side = int(round(rng.uniform(0.35, 1.0) * min(height, width)))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    raise KneuronError(f"unknown background kind {kind!r}; expected one of {', '.join(BACKGROUNDS)}")


# ----------------------------------------------------------------------------------------------- objects


def _needs_outline(canvas: np.ndarray, region: np.ndarray, color: str) -> bool:
    """True when too many pixels of ``canvas [H, W, 3]`` under ``region [H, W]`` look like ``color``."""
    under = canvas[region]
    if under.size == 0:
        return False
    distance = np.linalg.norm(under - np.array(COLOR_RGB[color], dtype=np.float32), axis=1)
    return float(np.mean(distance < CONTRAST_MIN)) > OUTLINE_SHARE


def _ring_color(color: str) -> str:
    r, g, b = COLOR_RGB[color]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 110 else "white"


def _composite(canvas: np.ndarray, coverage: np.ndarray, color: str) -> None:
    """Alpha-blend a flat colour over ``canvas [H, W, 3]`` in place with ``coverage [H, W]`` as alpha."""
    alpha = coverage[:, :, None]
    canvas *= 1.0 - alpha
    canvas += alpha * np.array(COLOR_RGB[color], dtype=np.float32)


def _try_objects(
    rng: np.random.Generator, config: WorldConfig, canvas: np.ndarray, tries_per_object: int = 40
) -> list[WorldObject] | None:
    """Draw and place one set of objects onto ``canvas`` (modified in place); None if they do not fit."""
    size = config.image_size
    scale = size / 64.0
    margin = outline_width(size) + 1.0
    cells = config.layout_cells
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    categories = [CATEGORIES[i] for i in rng.choice(len(CATEGORIES), size=n, replace=False)]
    colors = [COLORS[i] for i in rng.choice(len(COLORS), size=n, replace=False)]
    placed: list[WorldObject] = []
    order = rng.permutation(cells * cells)[:n] if cells else [None] * n
    for category, color, cell in zip(categories, colors, order, strict=True):
        size_class = SIZES[int(rng.integers(len(SIZES)))]
        if cells:
            low, high = (f * size / cells for f in SIZE_RANGE_OF_CELL[size_class])
        else:
            low, high = (v * scale for v in SIZE_RANGE_AT_64[size_class])
        diameter = round(float(rng.uniform(low, high)), 2)
        limit = MAX_ROTATION_DEG[category]
        rotation = round(float(rng.uniform(-limit, limit)), 1) if limit > 0 else 0.0
        extent = shape_polygon(category, (0.0, 0.0), diameter, rotation)
        lowest = -extent.min(axis=0) + margin
        highest = size - extent.max(axis=0) - margin
        for _ in range(tries_per_object):
            if cell is None:
                center = (round(float(rng.uniform(lowest[0], highest[0])), 2),
                          round(float(rng.uniform(lowest[1], highest[1])), 2))
            else:
                pitch = size / cells
                anchor = ((int(cell) % cells + 0.5) * pitch, (int(cell) // cells + 0.5) * pitch)
                jitter = rng.uniform(-config.jitter_px, config.jitter_px, 2) * scale
                center = (round(float(np.clip(anchor[0] + jitter[0], lowest[0], highest[0])), 2),
                          round(float(np.clip(anchor[1] + jitter[1], lowest[1], highest[1])), 2))
            obj = WorldObject(category, color, size_class, center, diameter, rotation, None,
                              np.zeros(0, bool), np.zeros(0, bool))
            fill, _ = object_coverages(obj, size)
            if _needs_outline(canvas, fill >= 0.5, color):
                obj.outline = _ring_color(color)
            fill, total = object_coverages(obj, size)
            full = total >= 0.5
            if all((p.visible_mask & ~full).sum() >= MIN_VISIBLE_FRACTION * p.full_mask.sum() for p in placed):
                break
        else:
            return None
        for p in placed:
            p.visible_mask = p.visible_mask & ~full
        obj.full_mask, obj.visible_mask = full, full.copy()
        if obj.outline is not None:
            _composite(canvas, total, obj.outline)
        _composite(canvas, fill, color)
        placed.append(obj)
    return placed


def render_world_image(
    rng: np.random.Generator, config: WorldConfig
) -> tuple[np.ndarray, list[WorldObject], str]:
    """One world image: (pixels ``uint8 [S, S, 3]``, objects in drawing order, background kind)."""
    size = config.image_size
    background_kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    background = _background(background_kind, rng, size)
    for _ in range(200):
        canvas = background.copy()
        objects = _try_objects(rng, config, canvas)
        if objects is not None:
            return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects, background_kind
    raise KneuronError(f"could not place {config.max_objects} objects in a {size} px image; use fewer objects")


# ----------------------------------------------------------------------------------------------- captions


def relation(a: tuple[float, float], b: tuple[float, float], image_size: int) -> str:
    """Where centre ``a`` (x, y) lies relative to centre ``b``: above, below, left of, right of or next to.

    "next to" when the centres are close (under 20% of the image apart on both axes) or diagonal
    (the smaller offset is more than 75% of the larger one).
    """
    dx, dy = a[0] - b[0], a[1] - b[1]
    big, small = max(abs(dx), abs(dy)), min(abs(dx), abs(dy))
    if big < 0.2 * image_size or small > 0.75 * big:
        return "next to"
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def _phrase(obj: WorldObject, with_size: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.color, obj.category]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _listing(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return " , ".join(phrases[:-1]) + " and " + phrases[-1]


def _related(objects: list[WorldObject], with_size: bool, image_size: int) -> str:
    """First object related to the second; further objects joined with "and"."""
    text = _phrase(objects[0], with_size)
    if len(objects) > 1:
        text += f" {relation(objects[0].center, objects[1].center, image_size)} {_phrase(objects[1], with_size)}"
    for obj in objects[2:]:
        text += f" and {_phrase(obj, with_size)}"
    return text


def _caption(template: int, objects: list[WorldObject], background: str, image_size: int) -> str:
    n = len(objects)
    if template == 0:
        return f"{_related(objects, False, image_size)} on a {background} background"
    if template == 1:
        return f"there is {_listing([_phrase(o, True) for o in objects])} on a {background} background"
    if template == 2:
        noun = "shape" if n == 1 else "shapes"
        return f"{COUNT_WORDS[n]} {noun} : {_listing([_phrase(o, False) for o in objects])} , {background} background"
    if template == 3:
        return f"a {background} background with {_listing([_phrase(o, True) for o in objects])}"
    if template == 4:
        return f"an image of {_related(objects, True, image_size)} in front of a {background} background"
    raise ValueError(f"no caption template {template}")


def world_captions(
    rng: np.random.Generator, objects: list[WorldObject], background: str, config: WorldConfig
) -> list[str]:
    """``captions_per_image`` captions, each from a different template, each naming every object and the
    background; the objects are listed in a fresh random order per caption."""
    templates = sorted(int(t) for t in rng.choice(N_TEMPLATES, size=config.captions_per_image, replace=False))
    captions = []
    for template in templates:
        order = [objects[int(i)] for i in rng.permutation(len(objects))]
        captions.append(_caption(template, order, background, config.image_size))
    return captions


# ----------------------------------------------------------------------------------------------- writing


def _annotation(obj: WorldObject, image_id: int, index: int) -> dict:
    mask = obj.visible_mask
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.nonzero(mask)
    x0, y0 = int(cols.min()), int(rows.min())
    return {
        "id": image_id * 10 + index + 1,
        "image_id": image_id,
        "category_id": CATEGORY_IDS[obj.category],
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(mask.sum()),
        "bbox": [x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1],
        "iscrowd": 0,
        "attributes": {
            "color": obj.color,
            "size": obj.size,
            "center": [obj.center[0], obj.center[1]],
            "diameter": obj.diameter,
            "rotation_deg": obj.rotation_deg,
            "outline": obj.outline,
            "full_area": int(obj.full_mask.sum()),
        },
    }


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")


def _info(config: WorldConfig, split: str) -> dict:
    return {
        "description": f"kneuron shapes world, split {split}",
        "version": str(GENERATOR_VERSION),
        "contributor": "kneuron",
        "url": "",
        "year": 2017,
        "date_created": "",
        "kneuron_world": {"split": split, **asdict(config)},
    }


def _manifest(config: WorldConfig, complete: bool, counts: dict | None, splits: list[str] | None = None) -> dict:
    """The ``world.json`` payload; ``splits`` (the finished splits) is written only while the world is partial."""
    manifest = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "config": asdict(config),
        "complete": complete,
        "photos": [name for name, _ in load_photos()],
        "counts": counts or {},
    }
    if not complete and splits is not None:
        manifest["splits"] = list(splits)
    return manifest


def world_splits(manifest: dict | None) -> tuple[str, ...]:
    """The finished splits of a world manifest (`read_world_manifest`), in `SPLITS` order: every split of a
    complete world (also one written before splits on demand existed), else those listed under ``splits``."""
    if manifest is None:
        return ()
    if manifest.get("complete"):
        return SPLITS
    listed = manifest.get("splits")
    return tuple(s for s in SPLITS if isinstance(listed, list) and s in listed)


def _check_splits(splits: Sequence[str] | None) -> tuple[str, ...]:
    """``splits`` as a tuple in `SPLITS` order without duplicates (None: every split); KneuronError for others."""
    if splits is None:
        return SPLITS
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise KneuronError(f"unknown world split(s) {', '.join(map(repr, unknown))}; expected {', '.join(SPLITS)}")
    return tuple(s for s in SPLITS if s in splits)


WORLD_ENV_VAR = "KNEURON_WORLD"
DEFAULT_WORLD_PATH = "./kneuron-world"


def default_world_path() -> Path:
    """``$KNEURON_WORLD`` if set, else ``./kneuron-world``."""
    return Path(os.environ.get(WORLD_ENV_VAR) or DEFAULT_WORLD_PATH).expanduser()


def read_world_manifest(world_dir: Path | str) -> dict | None:
    """The ``world.json`` manifest of a generated world, or None if there is none (or it is unreadable)."""
    path = Path(world_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR else None


def world_config_of(world_dir: Path | str) -> WorldConfig | None:
    """The config a world directory was generated with, or None if it is not a kneuron world."""
    manifest = read_world_manifest(world_dir)
    if manifest is None or manifest.get("version") != GENERATOR_VERSION:
        return None
    try:
        return WorldConfig(**manifest["config"])
    except (KeyError, TypeError, KneuronError):
        return None


def check_world_target(out_dir: Path | str, config: WorldConfig, force: bool = False) -> None:
    """Refuse (KneuronError) a non-empty ``out_dir`` that is not a world of the same ``config``; ``force``
    overwrites a world of another config, never a folder that holds no world, nor ``/``, the home or current
    folder or a parent of them (`kneuron.engine.runtime.replace_guard`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KneuronError(f"world output path exists and is not a directory: {out_dir}")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    existing = world_config_of(out_dir)
    if existing is None:
        raise KneuronError(f"{out_dir} is not empty and is not a kneuron world; write the world to a new or "
                           "empty folder")
    if force:
        check_not_protected(out_dir)
        return
    if existing != config:
        changed = ", ".join(
            f"{f.name} {getattr(existing, f.name)} -> {getattr(config, f.name)}"
            for f in fields(config) if getattr(existing, f.name) != getattr(config, f.name)
        )
        raise KneuronError(f"{out_dir} holds a world with another config ({changed}); pass --force to overwrite")


def ensure_world(out_dir: Path | str, config: WorldConfig = WorldConfig(),
                 splits: Sequence[str] | None = None) -> Path:
    """``out_dir`` holding ``splits`` (None: every split) of the world of ``config``: splits already finished
    there are reused, the missing ones generated (see `generate_world`).

    A non-empty folder that is not a world of this config raises KneuronError (see check_world_target).
    """
    out_dir = Path(out_dir)
    wanted = _check_splits(splits)
    manifest = read_world_manifest(out_dir)
    if manifest is not None and world_config_of(out_dir) == config:
        have = world_splits(manifest)
        missing = tuple(s for s in wanted if s not in have)
        return generate_world(out_dir, config, splits=missing) if missing else out_dir
    check_world_target(out_dir, config)
    return generate_world(out_dir, config, splits=wanted)


def _generate_split(out_dir: Path, config: WorldConfig, split: str) -> dict[str, int]:
    """Write one split's PNGs and COCO files (removing PNGs the split does not have); its counts."""
    split_index = SPLITS.index(split)
    categories = [{"id": CATEGORY_IDS[name], "name": name, "supercategory": "shape"} for name in CATEGORIES]
    licenses = [{"id": 1, "name": "generated by kneuron, public domain", "url": ""}]
    split_dir = out_dir / split
    split_dir.mkdir(exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    for index in range(config.n_images(split)):
        rng = np.random.default_rng([config.seed, split_index, index])
        pixels, objects, background = render_world_image(rng, config)
        image_id = SPLIT_ID_BASE[split] + index + 1
        file_name = f"{image_id:012d}.png"
        Image.fromarray(pixels).save(split_dir / file_name, format="PNG")
        images.append({
            "id": image_id, "file_name": file_name, "width": config.image_size,
            "height": config.image_size, "license": 1, "background": background,
        })
        annotations.extend(_annotation(obj, image_id, k) for k, obj in enumerate(objects))
        for j, text in enumerate(world_captions(rng, objects, background, config)):
            captions.append({"id": image_id * 10 + j, "image_id": image_id, "caption": text})
    keep = {image["file_name"] for image in images}
    for stale in split_dir.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    head = {"info": _info(config, split), "licenses": licenses, "images": images}
    _write_json(out_dir / "annotations" / f"instances_{split}.json",
                {**head, "categories": categories, "annotations": annotations})
    _write_json(out_dir / "annotations" / f"captions_{split}.json", {**head, "annotations": captions})
    return {"images": len(images), "annotations": len(annotations), "captions": len(captions)}


def generate_world(out_dir: Path | str, config: WorldConfig = WorldConfig(),
                   splits: Sequence[str] | None = None) -> Path:
    """Write ``splits`` (None: every split) of the world for ``config`` under ``out_dir`` (created if needed)
    and return ``out_dir``.

    Overwrites those splits' files; PNGs in their folders that the new world does not have are removed. Splits
    of the same config finished earlier in ``out_dir`` stay (and stay listed); the manifest is written first
    without the splits being written, after each split, and last with the counts.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KneuronError(f"world output path is not a directory: {out_dir}")
    targets = _check_splits(splits)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    previous = read_world_manifest(out_dir) if world_config_of(out_dir) == config else None
    old_counts = previous.get("counts", {}) if previous is not None else {}
    counts = {s: old_counts[s] for s in world_splits(previous) if s not in targets and s in old_counts}

    def manifest(complete: bool) -> None:
        done = [s for s in SPLITS if s in counts]
        _write_json(out_dir / MANIFEST_NAME, _manifest(config, complete=complete, counts=counts if complete or done
                                                       else None, splits=done))

    manifest(complete=False)
    for split in targets:
        counts[split] = _generate_split(out_dir, config, split)
        manifest(complete=False)
    complete = all(s in counts for s in SPLITS)
    counts = {s: counts[s] for s in SPLITS if s in counts}
    manifest(complete=complete)
    return out_dir


def caption_vocabulary(world_dir: Path | str) -> list[str]:
    """Sorted set of the space-separated words over all ``annotations/captions_*.json`` of a world."""
    files = sorted((Path(world_dir) / "annotations").glob("captions_*.json"))
    if not files:
        raise KneuronError(f"no captions_*.json under {Path(world_dir) / 'annotations'}")
    words: set[str] = set()
    for path in files:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            words.update(word for ann in payload["annotations"] for word in ann["caption"].split())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KneuronError(f"unreadable captions file {path}: {exc}") from None
    return sorted(words)
