"""Read a COCO-format dataset: real MS COCO 2017 or the embedded shapes world, with the same code.

Layout (both)::

    root/annotations/instances_<split>.json   required (pycocotools format)
    root/annotations/captions_<split>.json    optional (no file -> no captions)
    root/<split>/<file_name>                  images

e.g. ``CocoDataset("/data/coco", "val2017")`` or ``CocoDataset("world", "test")``.
A *concept* is a category name. Conventions:

- ``images_with`` / ``concepts_in`` count only non-crowd instances (``iscrowd == 0``);
- ``concept_mask`` is the union of *all* the concept's instances in the image, crowd regions included,
  since everything showing the concept must go when it is inpainted away; an image where that union
  has no pixel raises :class:`KneuronError` (callers pick images with ``images_with`` first).
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from kneuron.engine.errors import KneuronError

log = logging.getLogger(__name__)

__all__ = ["CocoDataset", "rle_string_counts", "segmentation_problem", "split_ident_eval", "to_rgb"]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image``: grayscale, palette, CMYK, 16-bit and alpha modes converted.

    Alpha is dropped (the colour values are kept); 16/32-bit integer grayscale is scaled to 8 bits.
    """
    if image.mode == "RGB":
        return image.copy()
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            peak = 65535.0
        elif image.mode == "I":
            peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        else:  # "F": stretch to its own maximum
            peak = max(float(array.max(initial=0)), 1.0)
        gray = np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


class CocoDataset:
    """One split of a COCO-format dataset. Masks are ``bool [H, W]``; images are PIL RGB."""

    def __init__(self, root: Path | str, split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.instances_path = self.root / "annotations" / f"instances_{split}.json"
        self.captions_path = self.root / "annotations" / f"captions_{split}.json"
        self.image_dir = self.root / split
        if not self.instances_path.is_file():
            raise KneuronError(f"COCO instances file not found: {self.instances_path}")
        if not self.image_dir.is_dir():
            raise KneuronError(f"COCO image folder not found: {self.image_dir}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self._coco = COCO(str(self.instances_path))
        except (ValueError, KeyError, TypeError, AssertionError, OSError) as exc:
            raise KneuronError(f"unreadable COCO instances file {self.instances_path}: {_one_line(exc)}") from None
        self._coco.dataset.setdefault("annotations", [])  # image-info-only files have none
        self.orphan_annotations = self._drop_orphan_annotations()
        self.categories: dict[int, str] = {
            int(cat_id): cat["name"] for cat_id, cat in sorted(self._coco.cats.items())
        }
        self._ids_by_name = {name: cat_id for cat_id, name in self.categories.items()}
        self._ids_by_folded = {name.strip().lower(): cat_id for cat_id, name in self.categories.items()}
        self._captions: dict[int, list[str]] = self._read_captions()

    def _drop_orphan_annotations(self) -> list[int]:
        """Drop (and log, with the reason) annotations whose image_id is in no image of the file: they have no
        pixels to mask, so they must not put an image id into a split. Returns their annotation ids."""
        orphans = sorted(int(ann_id) for ann_id, ann in self._coco.anns.items()
                         if ann.get("image_id") not in self._coco.imgs)
        if orphans:
            keep = [ann for ann in self._coco.dataset["annotations"] if ann.get("image_id") in self._coco.imgs]
            self._coco.dataset["annotations"] = keep
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco.createIndex()
            log.warning("skipped %d annotation(s) of %s whose image_id is not in its images (first: annotation "
                        "%d)", len(orphans), self.instances_path, orphans[0])
        return orphans

    def _read_captions(self) -> dict[int, list[str]]:
        if not self.captions_path.is_file():
            return {}
        try:
            payload = json.loads(self.captions_path.read_text(encoding="utf-8"))
            rows = sorted((int(a["id"]), int(a["image_id"]), str(a["caption"])) for a in payload["annotations"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KneuronError(f"unreadable COCO captions file {self.captions_path}: {_one_line(exc)}") from None
        captions: dict[int, list[str]] = defaultdict(list)
        for _, image_id, text in rows:
            captions[image_id].append(" ".join(text.split()))
        return dict(captions)

    def __len__(self) -> int:
        return len(self._coco.imgs)

    def __repr__(self) -> str:
        return f"CocoDataset(root={str(self.root)!r}, split={self.split!r}, images={len(self)})"

    # ------------------------------------------------------------------------------------------ concepts

    def category_id(self, name: str) -> int:
        """The category id of a concept name (exact, else case-insensitive); unknown -> KneuronError."""
        if name in self._ids_by_name:
            return self._ids_by_name[name]
        folded = name.strip().lower()
        if folded in self._ids_by_folded:
            return self._ids_by_folded[folded]
        names = list(self.categories.values())
        close = difflib.get_close_matches(folded, names, n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else f"known: {', '.join(sorted(names)[:20])}"
        if not close and len(names) > 20:
            hint += f", ... ({len(names)} in all)"
        raise KneuronError(f"unknown concept {name!r} in {self.instances_path}; {hint}")

    def image_ids(self) -> list[int]:
        """All image ids of the split, ascending (images without annotations included)."""
        return sorted(int(i) for i in self._coco.imgs)

    def images_with(self, concept: str, min_area: float = 0) -> list[int]:
        """Ascending ids of images with at least one non-crowd instance of ``concept`` whose
        annotated ``area`` (pixels) is >= ``min_area``."""
        cat_id = self.category_id(concept)
        ids = set()
        for ann_id in self._coco.getAnnIds(catIds=[cat_id]):
            ann = self._coco.anns[ann_id]
            if ann.get("iscrowd", 0):
                continue
            try:
                area = float(ann.get("area", 0))
            except (TypeError, ValueError):
                raise KneuronError(f"malformed area {ann.get('area')!r} in annotation {ann_id} "
                                   f"(image {ann.get('image_id')}) of {self.instances_path}") from None
            if area >= min_area:
                ids.add(int(ann["image_id"]))
        return sorted(ids)

    def concepts_in(self, image_id: int) -> list[str]:
        """Names of the categories with a non-crowd instance in the image, in category-id order."""
        self._image_info(image_id)
        cat_ids = {
            int(self._coco.anns[a]["category_id"])
            for a in self._coco.getAnnIds(imgIds=[image_id])
            if not self._coco.anns[a].get("iscrowd", 0)
        }
        return [self.categories[c] for c in sorted(cat_ids) if c in self.categories]

    def concept_mask(self, image_id: int, concept: str) -> np.ndarray:
        """``bool [H, W]``: union of every instance (crowd too) of ``concept`` in the image.

        No instance or no pixel -> KneuronError; so is a malformed instance (see `annotation_mask`).
        """
        info = self._image_info(image_id)
        cat_id = self.category_id(concept)
        height, width = self._image_size(info)
        mask = np.zeros((height, width), dtype=bool)
        for ann_id in self._coco.getAnnIds(imgIds=[image_id], catIds=[cat_id]):
            mask |= self.annotation_mask(ann_id)
        if not mask.any():
            raise KneuronError(f"empty mask: concept {concept!r} has no pixels in image {image_id} ({self.split})")
        return mask

    def annotation_mask(self, ann_id: int) -> np.ndarray:
        """``bool [H, W]``: the pixels of one annotation (polygons, uncompressed or compressed RLE).

        The segmentation is checked before pycocotools sees it (pycocotools raises bare ``Exception`` on an odd
        polygon and crashes the process on a NaN coordinate). A malformed one -> one-line KneuronError
        ``malformed segmentation in annotation A (image I) of FILE: REASON``, so a caller can skip that
        (concept, image) pair with the reason.
        """
        ann = self._coco.anns.get(ann_id)
        if ann is None:
            raise KneuronError(f"annotation id {ann_id} is not in {self.instances_path}")
        image_id = ann.get("image_id")

        def bad(reason: str) -> KneuronError:
            return KneuronError(f"malformed segmentation in annotation {ann_id} (image {image_id}) of "
                                f"{self.instances_path}: {reason}")

        info = self._coco.imgs.get(image_id) if isinstance(image_id, int) else None
        if info is None:
            raise bad(f"image id {image_id!r} is not in the file")
        height, width = self._image_size(info)
        reason = segmentation_problem(ann.get("segmentation"), height, width)
        if reason is not None:
            raise bad(reason)
        try:
            decoded = self._coco.annToMask(ann)
        except Exception as exc:  # pycocotools raises bare Exception, TypeError, ValueError, IndexError
            raise bad(_one_line(exc)) from None
        if decoded.shape != (height, width):
            raise bad(f"decodes to {decoded.shape[1]}x{decoded.shape[0]} pixels, not the image's {width}x{height}")
        return cast("np.ndarray", decoded.astype(bool))

    # ------------------------------------------------------------------------------------------ images

    def _image_info(self, image_id: int) -> dict:
        info = self._coco.imgs.get(image_id)
        if info is None:
            raise KneuronError(f"image id {image_id} is not in {self.instances_path}")
        return cast("dict", info)

    def _image_size(self, info: dict) -> tuple[int, int]:
        """``(height, width)`` of an image entry; missing or non-positive -> KneuronError."""
        try:
            height, width = int(info["height"]), int(info["width"])
        except (KeyError, TypeError, ValueError):
            height = width = 0
        if height <= 0 or width <= 0:
            raise KneuronError(f"image {info.get('id')} in {self.instances_path} has no valid width/height")
        return height, width

    def image_path(self, image_id: int) -> Path:
        return cast("Path", self.image_dir / self._image_info(image_id)["file_name"])

    def load_image(self, image_id: int) -> Image.Image:
        """The image as RGB (any PIL mode converted). Missing, corrupt or wrongly sized -> KneuronError."""
        info = self._image_info(image_id)
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise KneuronError(f"image file not found: {path}")
        try:
            with Image.open(path) as image:
                image.load()
                rgb = to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise KneuronError(f"corrupt or unreadable image {path}: {_one_line(exc)}") from None
        if info.get("width") is not None and info.get("height") is not None:
            height, width = self._image_size(info)
            if rgb.size != (width, height):
                raise KneuronError(
                    f"image {path} is {rgb.width}x{rgb.height} but {self.instances_path.name} says {width}x{height}"
                )
        return rgb

    def captions(self, image_id: int) -> list[str]:
        """Captions of the image in annotation-id order, whitespace normalised; [] if none."""
        self._image_info(image_id)
        return list(self._captions.get(image_id, []))


def rle_string_counts(counts: str | bytes) -> list[int] | None:
    """Run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``: 5 bits per character from
    ``'0'``, continuation bit 0x20, sign bit 0x10, counts after the second stored as differences); None when the
    string is not valid RLE (a character out of range or a number cut off)."""
    text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
    out: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                return None
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def segmentation_problem(segmentation: object, height: int, width: int) -> str | None:
    """Why a COCO ``segmentation`` cannot be decoded on a ``height x width`` image, or None if it can.

    Polygons: a non-empty list of lists of finite numbers, each of even length >= 6 (three points), every
    point within one image size of the image. RLE: ``{"size": [height, width], "counts": ...}`` with
    non-negative run lengths (a list of integers, or a compressed string) summing to ``height * width``.
    """
    if isinstance(segmentation, list):
        return _polygons_problem(segmentation, height, width)
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    return f"segmentation is neither polygons nor RLE: {type(segmentation).__name__}"


def _polygons_problem(segmentation: list[Any], height: int, width: int) -> str | None:
    """`segmentation_problem` of a polygon list."""
    if not segmentation:
        return "empty polygon list"
    for index, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return f"polygon {index} is not a list of numbers"
        if len(polygon) < 6 or len(polygon) % 2:
            return (f"polygon {index} has {len(polygon)} coordinates "
                    "(needs an even number, at least 6: x,y of three points or more)")
        if not all(math.isfinite(v) for v in polygon):
            return f"polygon {index} has a non-finite coordinate"
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
            return f"polygon {index} reaches far outside the {width}x{height} image"
    return None


def _rle_problem(segmentation: dict[str, Any], height: int, width: int) -> str | None:
    """`segmentation_problem` of an RLE dict."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_number(v) for v in size)):
        return f"RLE without a [height, width] size: {size!r}"
    if [int(size[0]), int(size[1])] != [height, width]:
        return f"RLE size {size} is not the image's [height, width] [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return "RLE counts are not all integers"
        runs: list[int] = counts
    elif isinstance(counts, (str, bytes)):
        decoded = rle_string_counts(counts)
        if decoded is None:
            return "RLE counts string is not valid compressed RLE"
        runs = decoded
    else:
        return f"RLE counts are neither a list nor a string: {type(counts).__name__}"
    if any(v < 0 for v in runs):
        return "RLE has a negative run length"
    if sum(runs) != height * width:
        return f"RLE run lengths cover {sum(runs)} pixels, not the image's {height * width}"
    return None


def split_ident_eval(
    image_ids: Sequence[int], ident_fraction: float, seed: int, key: str
) -> tuple[list[int], list[int]]:
    """Split image ids into (identification, evaluation) lists, both ascending.

    Each id gets a score ``sha256(f"{seed}:{key}:{id}")``; the ``round(ident_fraction * n)`` lowest
    scores form the identification set. Same (ids as a set, fraction, seed, key) -> same split,
    whatever the input order; duplicates are dropped; the two parts are disjoint and cover the input.
    """
    if not 0.0 <= ident_fraction <= 1.0 or math.isnan(ident_fraction):
        raise KneuronError(f"ident_fraction must be in [0, 1], got {ident_fraction}")
    unique = sorted({int(i) for i in image_ids})

    def score(image_id: int) -> bytes:
        return hashlib.sha256(f"{seed}:{key}:{image_id}".encode()).digest()

    ranked = sorted(unique, key=lambda i: (score(i), i))
    n_ident = int(math.floor(ident_fraction * len(unique) + 0.5))
    return sorted(ranked[:n_ident]), sorted(ranked[n_ident:])
