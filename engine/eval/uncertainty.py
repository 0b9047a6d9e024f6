"""Seeded bootstrap intervals and paired sign-flip tests for per-image evaluation outcomes (pure numpy).

Data: ``N`` images (rows), each in one concept (``concept`` codes ``[N]`` in ``0..C-1``) and one group (``group``
codes ``[N]`` in ``0..G-1``, e.g. 0 = target, 1 = other), and ``K`` columns (e.g. one per method x budget). A
*cell* is (concept, group); its value in column k is the ratio of sums ``sum(num[:, k]) / sum(den[:, k])`` over
its rows: with ``den = 1`` the plain mean (a mention-rate drop, a BLEU-4 drop), with ``den`` = pairs counted the
pooled share (other-object mentions lost / mentioned before). A cell without rows (or ``sum(den) = 0``) is NaN.

A *statistic* maps the cell values ``[..., C, G, K]`` to per-concept values ``[..., C, M]`` (vectorised over
leading axes), e.g. ``T - O`` per method; the reported number is their mean over concepts (NaN concepts left
out), as `kneuron.engine.eval.summary` averages concepts.

Two bootstrap schemes (`bootstrap`), both percentile intervals from seeded draws:
- ``images``: each cell's rows resampled with replacement within the cell (the concepts fixed); the same draw is
  applied to every column, so columns evaluated on the same images stay paired;
- ``concepts``: concepts resampled with replacement (each keeps all its rows): how much the answer depends on
  which concepts were picked.
`sign_flip_pvalue`: paired permutation test of a difference whose per-row values are ``num`` (method minus
baseline on the same image): under H0 each row's sign is exchangeable; all ``2^N`` flips when that is at most
``n_perm``, else ``n_perm`` seeded random flips (p = (1 + #|perm| >= |observed|) / (1 + n_perm)). `holm` adjusts
p-values across baselines.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]
SCHEMES: tuple[str, ...] = ("images", "concepts")


@dataclass(frozen=True)
class Intervals:
    """Estimates ``[M]`` and their percentile intervals ``low``/``high`` ``[M]`` under one scheme."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    scheme: str
    n_boot: int


def _as_2d(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[:, None] if array.ndim == 1 else array


def cell_values(num: np.ndarray, den: np.ndarray, concept: np.ndarray, group: np.ndarray, n_concepts: int,
                n_groups: int, weights: np.ndarray | None = None) -> np.ndarray:
    """``[C, G, K]`` ratios of sums per cell (NaN where a cell has no rows or zero ``den``); ``weights`` ``[N]``:
    how often each row counts (a bootstrap draw), default 1."""
    num, den = _as_2d(num), _as_2d(den)
    w = np.ones(len(num)) if weights is None else np.asarray(weights, dtype=float)
    cell = np.asarray(concept) * n_groups + np.asarray(group)
    sums = np.zeros((n_concepts * n_groups, num.shape[1]))
    dens = np.zeros_like(sums)
    np.add.at(sums, cell, num * w[:, None])
    np.add.at(dens, cell, den * w[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(dens > 0, sums / np.where(dens > 0, dens, 1.0), np.nan)
    return out.reshape(n_concepts, n_groups, -1)


def image_draws(cell: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[B, N]`` row counts of ``n_boot`` draws resampling rows with replacement within each cell (``cell``
    ``[N]``: concept * G + group; seeded, cells in ascending code order)."""
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell)
    counts = np.zeros((n_boot, len(cell)))
    for code in np.unique(cell):
        rows = np.flatnonzero(cell == code)
        counts[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1.0 / len(rows)), size=n_boot)
    return counts


def _weighted_cells(weights: np.ndarray, num: np.ndarray, den: np.ndarray, cell: np.ndarray, n_cells: int,
                    fixed_den: bool = False) -> np.ndarray:
    """``[B, S, K]`` per-cell ratios of row sums weighted by ``weights`` ``[B, N]`` (one matrix product per cell:
    each row is in one cell). ``fixed_den``: ``den`` is already ``[B, S, K]`` (the denominators, not weighted)."""
    sums = np.zeros((len(weights), n_cells, num.shape[1]))
    dens = den if fixed_den else np.zeros_like(sums)
    for code in np.unique(cell):
        rows = np.flatnonzero(cell == code)
        sums[:, code] = weights[:, rows] @ num[rows]
        if not fixed_den:
            dens[:, code] = weights[:, rows] @ den[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dens > 0, sums / np.where(dens > 0, dens, 1.0), np.nan)


def concept_draws(n_concepts: int, n_boot: int, seed: int) -> np.ndarray:
    """``[B, C]`` concept counts of ``n_boot`` draws of ``n_concepts`` concepts with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_concepts, np.full(n_concepts, 1.0 / n_concepts), size=n_boot).astype(float)


def _weighted_concept_mean(per_concept: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[B, M]`` means over concepts of ``per_concept`` ``[C, M]`` weighted by ``weights`` ``[B, C]``, NaN left out."""
    finite = np.isfinite(per_concept)
    values = np.where(finite, per_concept, 0.0)
    total = weights @ finite.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights @ values) / np.where(total > 0, total, 1.0), np.nan)


def concept_mean(per_concept: np.ndarray) -> np.ndarray:
    """``[..., M]`` mean over the concept axis (``-2``) of ``[..., C, M]``, NaN concepts left out."""
    finite = np.isfinite(per_concept)
    count = finite.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(finite, per_concept, 0.0).sum(axis=-2) / np.maximum(count, 1), np.nan)


def _percentiles(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """``[M]`` low / high percentiles over the replicates ``[B, M]`` (NaN replicates left out; all-NaN -> NaN)."""
    alpha = (1.0 - level) / 2.0
    bad = ~np.isfinite(replicates)
    low = np.full(replicates.shape[1:], np.nan)
    high = np.full(replicates.shape[1:], np.nan)
    clean = ~bad.any(axis=0)
    if clean.any():
        low[clean], high[clean] = np.quantile(replicates[:, clean], [alpha, 1.0 - alpha], axis=0)
    for m in np.flatnonzero(~clean):
        kept = replicates[~bad[:, m], m]
        if len(kept):
            low[m], high[m] = np.quantile(kept, [alpha, 1.0 - alpha])
    return low, high


def estimate(num: np.ndarray, den: np.ndarray, concept: np.ndarray, group: np.ndarray, n_concepts: int,
             n_groups: int, statistic: Statistic) -> np.ndarray:
    """``[M]``: the statistic's per-concept values averaged over concepts, on all rows."""
    return concept_mean(statistic(cell_values(num, den, concept, group, n_concepts, n_groups)))


def bootstrap(num: np.ndarray, den: np.ndarray, concept: np.ndarray, group: np.ndarray, n_concepts: int,
              n_groups: int, statistic: Statistic, scheme: str, n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> Intervals:
    """Percentile ``level`` intervals of `estimate` under ``scheme`` (``images`` | ``concepts``, module doc)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    num, den = _as_2d(num), _as_2d(den)
    point = estimate(num, den, concept, group, n_concepts, n_groups, statistic)
    if scheme == "images":
        cell = np.asarray(concept) * n_groups + np.asarray(group)
        counts = image_draws(cell, n_boot, seed)  # [B, N]
        cells = _weighted_cells(counts, num, den, cell, n_concepts * n_groups)  # [B, S, K]
        replicates = concept_mean(statistic(cells.reshape(n_boot, n_concepts, n_groups, -1)))
    else:
        per_concept = statistic(cell_values(num, den, concept, group, n_concepts, n_groups))  # [C, M]
        replicates = _weighted_concept_mean(per_concept, concept_draws(n_concepts, n_boot, seed))
    low, high = _percentiles(replicates, level)
    return Intervals(point, low, high, scheme, n_boot)


def sign_flips(n_rows: int, n_perm: int, seed: int) -> np.ndarray:
    """``[P, N]`` signs: every one of the ``2^N`` sign vectors when ``2^N <= n_perm``, else ``n_perm`` seeded
    random ones."""
    if n_rows <= 20 and 2 ** n_rows <= n_perm:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n_rows))).reshape(-1, n_rows)
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([1.0, -1.0]), size=(n_perm, n_rows))


def sign_flip_pvalue(num: np.ndarray, den: np.ndarray, concept: np.ndarray, group: np.ndarray, n_concepts: int,
                     n_groups: int, statistic: Statistic, n_perm: int = 2000, seed: int = 0) -> np.ndarray:
    """``[M]`` two-sided p-values of the paired differences ``num`` (method minus baseline per row, ``den`` shared)
    under sign flips of whole rows. ``statistic`` must be linear in the cell values (differences, T - O, areas).
    """
    num, den = _as_2d(num), _as_2d(den)
    observed = estimate(num, den, concept, group, n_concepts, n_groups, statistic)
    signs = sign_flips(len(num), n_perm, seed)  # [P, N]
    exact = len(signs) == 2 ** len(num) and len(num) <= 20
    cell = np.asarray(concept) * n_groups + np.asarray(group)
    dens = np.zeros((n_concepts * n_groups, num.shape[1]))
    np.add.at(dens, cell, den)
    cells = _weighted_cells(signs, num, np.broadcast_to(dens, (len(signs), *dens.shape)), cell,
                            n_concepts * n_groups, fixed_den=True)
    flipped = concept_mean(statistic(cells.reshape(len(signs), n_concepts, n_groups, -1)))  # [P, M]
    tol = 1e-12 * np.maximum(1.0, np.abs(observed))
    extreme = (np.abs(flipped) >= np.abs(observed) - tol).sum(axis=0)
    p = extreme / len(signs) if exact else (1.0 + extreme) / (1.0 + len(signs))
    return np.where(np.isfinite(observed), p, np.nan)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN kept NaN, not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    kept = np.flatnonzero(np.isfinite(p))
    order = kept[np.argsort(p[kept], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


__all__ = ["Intervals", "SCHEMES", "bootstrap", "cell_values", "concept_draws", "concept_mean", "estimate",
           "holm", "image_draws", "sign_flip_pvalue", "sign_flips"]
