"""Intervals for the report's per-item numbers grouped by concept: decode hit rates (one 0/1 per neuron) and
heatmap lifts (one value per image). Pure numpy over `kneuron.engine.eval.uncertainty`.

`pooled_interval`: the pooled mean (sum over all items / their number, as the hit-rate table pools neurons)
with seeded percentile intervals resampling items within concepts and resampling concepts. `concept_intervals`:
the mean over concepts of per-concept means of several paired columns (items aligned across columns, e.g. the
same images under each neuron set), with both intervals, and `paired_differences` of each column against one
baseline column with the sign-flip p-value (Holm-adjusted across the columns).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kneuron.engine.eval.uncertainty import bootstrap, concept_draws, holm, image_draws, sign_flip_pvalue

N_BOOT = 1000
SEED = 0
LEVEL = 0.95


def _stack(by_concept: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    values = [np.asarray(v, dtype=float) for v in by_concept.values()]
    codes = [np.full(len(v), i) for i, v in enumerate(values)]
    return (np.concatenate(values) if values else np.zeros(0)), (np.concatenate(codes) if codes else np.zeros(0, int))


def pooled_interval(by_concept: Mapping[str, Sequence[float]], n_boot: int = N_BOOT, seed: int = SEED,
                    level: float = LEVEL) -> dict[str, Any]:
    """The pooled mean of the items with its ``images`` (items within concepts) and ``concepts`` intervals,
    ``n`` items and ``n_concepts``; NaN estimate for no items."""
    values, codes = _stack({c: v for c, v in by_concept.items() if len(v)})
    n_concepts = int(codes.max()) + 1 if len(codes) else 0
    out: dict[str, Any] = {"estimate": float("nan"), "images_low": float("nan"), "images_high": float("nan"),
                           "concepts_low": float("nan"), "concepts_high": float("nan"), "n": len(values),
                           "n_concepts": n_concepts}
    if not len(values):
        return out
    alpha = (1 - level) / 2
    counts = image_draws(codes, n_boot, seed)  # [B, N]
    items = counts @ values / counts.sum(axis=1)
    sums = np.bincount(codes, weights=values, minlength=n_concepts)
    sizes = np.bincount(codes, minlength=n_concepts).astype(float)
    draws = concept_draws(n_concepts, n_boot, seed)  # [B, C]
    concepts = (draws @ sums) / (draws @ sizes)
    out.update(estimate=float(values.mean()), images_low=float(np.quantile(items, alpha)),
               images_high=float(np.quantile(items, 1 - alpha)), concepts_low=float(np.quantile(concepts, alpha)),
               concepts_high=float(np.quantile(concepts, 1 - alpha)))
    return out


def _first(cells: np.ndarray) -> np.ndarray:
    return cells[..., 0, :]


def concept_intervals(columns: Mapping[str, Mapping[str, Sequence[float]]], n_boot: int = N_BOOT, seed: int = SEED,
                      level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """name -> mean over concepts of the per-concept means, with both intervals and n; ``columns``: name ->
    concept -> values (NaN values left out)."""
    out = {}
    for name, by_concept in columns.items():
        kept = {c: [x for x in v if np.isfinite(x)] for c, v in by_concept.items()}
        values, codes = _stack({c: v for c, v in kept.items() if v})
        if not len(values):
            out[name] = {"estimate": float("nan"), "images_low": float("nan"), "images_high": float("nan"),
                         "concepts_low": float("nan"), "concepts_high": float("nan"), "n": 0, "n_concepts": 0}
            continue
        n_c = int(codes.max()) + 1
        args = (values, np.ones_like(values), codes, np.zeros(len(values), int), n_c, 1, _first)
        images = bootstrap(*args, scheme="images", n_boot=n_boot, seed=seed, level=level)
        concepts = bootstrap(*args, scheme="concepts", n_boot=n_boot, seed=seed, level=level)
        out[name] = {"estimate": float(images.estimate[0]), "images_low": float(images.low[0]),
                     "images_high": float(images.high[0]), "concepts_low": float(concepts.low[0]),
                     "concepts_high": float(concepts.high[0]), "n": len(values), "n_concepts": n_c}
    return out


def paired_differences(columns: Mapping[str, Mapping[str, Sequence[float]]], baseline: str, n_boot: int = N_BOOT,
                       seed: int = SEED, level: float = LEVEL) -> dict[str, dict[str, Any]]:
    """name -> (column minus ``baseline`` on the same items: mean over concepts, both intervals, p-value, Holm p,
    n); items where either value is NaN are left out."""
    base = columns[baseline]
    diffs: dict[str, dict[str, list[float]]] = {}
    for name, by_concept in columns.items():
        if name == baseline:
            continue
        diffs[name] = {c: [a - b for a, b in zip(v, base.get(c, []), strict=True) if np.isfinite(a) and np.isfinite(b)]
                       for c, v in by_concept.items()}
    out = concept_intervals(diffs, n_boot, seed, level)
    for name, by_concept in diffs.items():
        values, codes = _stack({c: v for c, v in by_concept.items() if v})
        p = float("nan")
        if len(values):
            p = float(sign_flip_pvalue(values, np.ones_like(values), codes, np.zeros(len(values), int),
                                       int(codes.max()) + 1, 1, _first, n_perm=n_boot, seed=seed)[0])
        out[name]["p_value"] = p
    adjusted = holm(np.array([out[n]["p_value"] for n in diffs]))
    for name, p in zip(diffs, adjusted, strict=True):
        out[name]["p_holm"] = float(p)
    return out


__all__ = ["concept_intervals", "paired_differences", "pooled_interval"]
