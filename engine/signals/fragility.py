"""Fragility controls with the model: how large each FFN unit's activation is, and which units change captions
when zeroed alone. Pure compute (no storage): images and units in, arrays and shares out.

- `activation_magnitude`: ``[L, d_ff]`` mean over images and positions of |O| (the input of ``down_proj``) at
  the image tokens (or every prompt position): the exact quantity that ``queries/massive_units.sql`` estimates
  from the stored per-pair means (|mean over P|, a lower bound).
- `massive_mask`: the massive-unit rule on any ``[L, d_ff]`` magnitudes (the rule of
  ``queries/massive_units.sql``): magnitude > k x the median of all units and ln(magnitude) beyond Tukey's
  far-out fence (Q3 + 3 IQR) of the log magnitudes.
- `caption_change_rate`: for each unit, the share of the images whose greedy caption changes when that unit
  alone is zeroed (at every position and decoding step, as in the suppression evaluation). A unit that changes
  most captions on its own is *fragile*: a neuron set containing it can look strong for any concept.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.models.base import VLMAdapter

#: a unit is fragile when zeroing it alone changes at least this share of the captions checked
FRAGILE_SHARE = 0.5


class _AbsSum:
    """Forward pre-hook on ``down_proj``: adds sum over rows and positions ``at`` of |input| ``[d_ff]``."""

    def __init__(self, at: torch.Tensor) -> None:
        self.at = at
        self.total: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        part = args[0][:, self.at].detach().float().abs().sum(dim=(0, 1))
        self.total = part if self.total is None else self.total + part


def activation_magnitude(adapter: VLMAdapter, images: Sequence[Image.Image], positions: str = "image",
                         batch_size: int = 8) -> np.ndarray:
    """``[L, d_ff]`` float64: mean over ``images`` and positions P (``"image"`` tokens or every ``"prompt"``
    position) of |O^l[..., i]|, one forward per batch with plain hooks."""
    sums = np.zeros((adapter.n_layers, adapter.d_ff))
    count = 0
    for start in range(0, len(images), batch_size):
        batch = list(images[start:start + batch_size])
        prepared = adapter.prepare(batch)
        at = prepared.positions(positions).to(adapter.device)
        hooks = [_AbsSum(at) for _ in range(adapter.n_layers)]
        with adapter.neuron_hooks(dict(enumerate(hooks))), torch.no_grad():
            adapter.model(*prepared.args, **prepared.kwargs)
        sums += np.stack([h.total.cpu().double().numpy() for h in hooks])  # type: ignore[union-attr]
        count += len(batch) * int(at.numel())
    return sums / max(count, 1)


def massive_mask(magnitude: np.ndarray, k: float = 10.0) -> np.ndarray:
    """``bool [L, d_ff]``: units whose magnitude exceeds ``k`` x the median magnitude of all units *and* whose
    log magnitude exceeds Q3 + 3 x IQR of the log magnitudes of the units above 0 (Tukey's far-out fence; the
    first rule alone flags the whole upper tail of a skewed distribution, the second keeps the far outliers)."""
    magnitude = np.asarray(magnitude, dtype=np.float64)
    above = magnitude > float(k) * float(np.median(magnitude))
    positive = magnitude[magnitude > 0]
    if not positive.size:
        return np.zeros(magnitude.shape, dtype=bool)
    q1, q3 = np.quantile(np.log(positive), [0.25, 0.75])
    with np.errstate(divide="ignore"):
        far_out: np.ndarray = above & (np.log(magnitude) > q3 + 3.0 * (q3 - q1))
    return far_out


def caption_change_rate(adapter: VLMAdapter, images: Sequence[Image.Image], units: Iterable[tuple[int, int]],
                        batch_size: int = 16, **generate_kwargs: Any) -> dict[tuple[int, int], float]:
    """``{(layer, unit): share of images whose caption changes when that unit alone is zeroed}``.

    One captioning pass of the unmodified model, then one per unit (``len(images)`` captions each).
    """
    before = caption_images(adapter, list(images), None, batch_size=batch_size, **generate_kwargs).texts
    out: dict[tuple[int, int], float] = {}
    for layer, unit in sorted(set((int(a), int(b)) for a, b in units)):
        after = caption_images(adapter, list(images), {layer: [unit]}, batch_size=batch_size,
                               **generate_kwargs).texts
        out[(layer, unit)] = sum(a != b for a, b in zip(before, after, strict=True)) / max(len(before), 1)
    return out


def fragile_units(rates: dict[tuple[int, int], float], share: float = FRAGILE_SHARE) -> list[tuple[int, int]]:
    """The units of ``rates`` (`caption_change_rate`) that change at least ``share`` of the captions, sorted."""
    return sorted(unit for unit, rate in rates.items() if rate >= share)


__all__ = ["FRAGILE_SHARE", "activation_magnitude", "caption_change_rate", "fragile_units", "massive_mask"]
