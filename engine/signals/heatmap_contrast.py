"""How much a neuron set's heatmap sits on the concept's object (`kneuron.engine.signals.heatmap` draws the heatmaps).

Per image: the mean normalised heat inside the concept's mask, outside it and on the other objects
(`ImageContrast`; `contrast_share`: share of images brighter inside), and `object_lift`: the relative
inside-outside contrast of the raw heat minus that of the token -> patch map's own mass, 0 for a set firing
equally at every image token however much the map concentrates on objects (see `kneuron.engine.signals.heatmap`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.heatmap import Neurons, heatmaps, patch_heat, token_to_patch_map, upsample


@dataclass(frozen=True)
class ImageContrast:
    """Mean heatmap value (heat in [0, 1], normalised per image) inside the concept's mask, outside it, and on
    the image's other objects (the union of the other concepts' masks, less the concept's; NaN when the image
    has no other object); ``lift``: `object_lift` of the raw heat (how much more the set's heat sits on the
    object than the token -> patch map alone puts there)."""

    image_id: int
    inside: float
    outside: float
    others: float = float("nan")
    lift: float = float("nan")

    @property
    def brighter_inside(self) -> bool:
        return self.inside > self.outside

    @property
    def brighter_than_others(self) -> bool:
        return self.inside > self.others


def object_contrast(heat: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(mean of ``heat`` where ``mask``, mean where not); NaN for an empty side."""
    mask = np.asarray(mask, dtype=bool)
    if heat.shape != mask.shape:
        raise KneuronError(f"heatmap shape {heat.shape} does not match mask shape {mask.shape}")
    inside = float(heat[mask].mean()) if mask.any() else float("nan")
    outside = float(heat[~mask].mean()) if (~mask).any() else float("nan")
    return inside, outside


def relative_contrast(values: np.ndarray, mask: np.ndarray) -> float:
    """``(mean inside - mean outside) / |mean over the image|`` of ``values`` ``[H, W]``; NaN for an empty side or
    a zero mean."""
    inside, outside = object_contrast(values, mask)
    scale = abs(float(np.mean(values)))
    return (inside - outside) / scale if scale > 0 else float("nan")


def object_lift(heat: np.ndarray, mass: np.ndarray, mask: np.ndarray) -> float:
    """`relative_contrast` of the raw heat minus that of the map's patch mass (``mass[p] = Σ_t map[t, p]``, both
    ``[H, W]``, upsampled the same way). A set whose units fire equally at every image token has
    ``heat = c · mass`` and lift 0, however much the map concentrates on the object (a Q-Former's queries read
    mostly object patches, so the normalised heat of any set, random included, is brightest on the object);
    a set that fires more at the tokens made from the object has lift > 0."""
    return relative_contrast(heat, mask) - relative_contrast(mass, mask)


def raw_heats(adapter: VLMAdapter, images: Sequence[Image.Image], neurons: Neurons, mapping: torch.Tensor,
              value: str = "magnitude") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (raw heat, patch mass), both float32 ``[H, W]`` upsampled to the image size, not normalised;
    ``mapping``: the images' `token_to_patch_map` ``[B, T, N]``."""
    grids = patch_heat(adapter, images, neurons, mapping=mapping, value=value)  # [B, rows, cols]
    mass = mapping.sum(dim=1).view(grids.shape)  # [B, rows, cols]
    return [(upsample(g, (im.height, im.width)), upsample(m, (im.height, im.width)))
            for g, m, im in zip(grids, mass, images, strict=True)]


def other_objects_mask(dataset: Any, image_id: int, concept: str, mask: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: pixels of the image's other concepts' instances that are not the concept's."""
    out = np.zeros_like(mask, dtype=bool)
    for other in dataset.concepts_in(image_id):
        if other != concept:
            out |= dataset.concept_mask(image_id, other)
    others: np.ndarray = out & ~mask
    return others


def heatmap_object_contrast(adapter: VLMAdapter, dataset: Any, image_ids: Sequence[int], concept: str,
                            neurons: Neurons, batch_size: int = 16, n_probes: int = 16, seed: int = 0,
                            value: str = "magnitude") -> tuple[float, list[ImageContrast]]:
    """Is the set's heatmap brighter on the concept's object than elsewhere?

    dataset: a `CocoDataset` (``load_image``, ``concept_mask``, ``concepts_in``). For each image: the per-image
    normalised heatmap (`heatmaps`), its mean inside the concept's mask, outside it and on the other objects.
    Returns (share of images whose inside mean is higher than the outside mean, per-image values); images
    whose mask covers everything or nothing do not count in the share; NaN share when no image counts.
    `share_vs_others` of the per-image values is the stricter test against the image's other objects.
    """
    return object_contrasts(adapter, dataset, image_ids, concept, {"set": neurons}, batch_size=batch_size,
                            n_probes=n_probes, seed=seed, value=value)["set"]


def contrast_share(per_image: Sequence[ImageContrast]) -> float:
    """Share of images with a higher mean heat inside the mask than outside (images with an empty side left
    out; NaN if none)."""
    counted = [r for r in per_image if np.isfinite(r.inside) and np.isfinite(r.outside)]
    return sum(r.brighter_inside for r in counted) / len(counted) if counted else float("nan")


def share_vs_others(per_image: Sequence[ImageContrast]) -> float:
    """Share of the images that show other objects where the concept's object is brighter than those objects
    (NaN if no image shows another object)."""
    counted = [r for r in per_image if np.isfinite(r.inside) and np.isfinite(r.others)]
    return sum(r.brighter_than_others for r in counted) / len(counted) if counted else float("nan")


def object_contrasts(adapter: VLMAdapter, dataset: Any, image_ids: Sequence[int], concept: str,
                     neuron_sets: Mapping[str, Neurons], batch_size: int = 16, n_probes: int = 16, seed: int = 0,
                     value: str = "magnitude") -> dict[str, tuple[float, list[ImageContrast]]]:
    """`heatmap_object_contrast` of several neuron sets (name -> neurons) on the same images; images, masks
    and token -> patch maps are computed once per batch."""
    results: dict[str, list[ImageContrast]] = {name: [] for name in neuron_sets}
    ids = [int(i) for i in image_ids]
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        images = [dataset.load_image(i) for i in chunk]
        masks = [dataset.concept_mask(i, concept) for i in chunk]
        others = [other_objects_mask(dataset, i, concept, m) for i, m in zip(chunk, masks, strict=True)]
        mapping = token_to_patch_map(adapter, images, n_probes=n_probes, seed=seed)
        for name, neurons in neuron_sets.items():
            heats = heatmaps(adapter, images, neurons, n_probes=n_probes, seed=seed, mapping=mapping, value=value)
            raw = raw_heats(adapter, images, neurons, mapping, value=value)
            for image_id, heat, (plain, mass), mask, other in zip(chunk, heats, raw, masks, others, strict=True):
                inside, outside = object_contrast(heat, mask)
                on_others = float(heat[other].mean()) if other.any() else float("nan")
                results[name].append(ImageContrast(image_id, inside, outside, on_others,
                                                   object_lift(plain, mass, mask)))
    return {name: (contrast_share(rows), rows) for name, rows in results.items()}
