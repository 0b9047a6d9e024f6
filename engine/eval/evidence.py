"""Intervals and paired tests for one evaluation's outcomes: every drop, rate, T(n), O(n) and specificity area.

Input: the `kneuron.engine.eval.summary.ImageOutcome` records of an evaluation (one per concept, method or
``method@n`` label, group and image). Each image becomes one row per (concept, group, image); each (label,
measure, reference) one column (`image_matrix`), as a ratio numerator / denominator per row:

- ``mention``: mentioned before - mentioned after (the drop of the concept's mention rate), denominator 1;
- ``mention_rate``: mentioned after (the rate itself; label ``unmodified``: mentioned before), denominator 1;
- ``retention``: the other objects named before and lost after / the other objects named before (the other-
  object mention loss, ``1 - retention``: O on other images);
- each (metric, reference) score: before - after, denominator 1 (0 where the image has no score).

Per (label, measure, reference) and group ``target`` / ``other`` / ``specificity`` (target - other), the estimate
is the mean over concepts of the per-concept value (as `kneuron.engine.eval.summary` averages), with the two bootstrap
intervals of `kneuron.engine.eval.uncertainty` (``images``: images resampled within concepts; ``concepts``: concepts
resampled), ``n_images`` (rows, or object pairs for retention) and ``n_concepts`` (`interval_table`).
`paired_table`: per label and every other label (the baseline) on the same images, the difference, its two
intervals, the sign-flip p-value and its Holm adjustment across the label's baselines.
`budget_evidence`: for a budget evaluation, T(n), O(n), T - O per (method, n) and each method's specificity
area (`kneuron.engine.eval.budget.specificity_area` as weights over budgets) with intervals, and the paired area
differences between methods.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kneuron.engine.eval.budget import split_label
from kneuron.engine.eval.mentions import mentions
from kneuron.engine.eval.summary import UNMODIFIED, ImageOutcome
from kneuron.engine.eval.uncertainty import bootstrap, holm, sign_flip_pvalue

GROUPS: tuple[str, ...] = ("target", "other")
CI_GROUPS: tuple[str, ...] = ("target", "other", "specificity")
N_BOOT = 1000
N_PERM = 1000
SEED = 0
LEVEL = 0.95

INTERVAL_SCHEMA = pa.schema([
    ("method", pa.string()), ("budget", pa.int64()), ("group", pa.string()), ("measure", pa.string()),
    ("reference", pa.string()), ("estimate", pa.float64()),
    ("images_low", pa.float64()), ("images_high", pa.float64()),
    ("concepts_low", pa.float64()), ("concepts_high", pa.float64()),
    ("n_images", pa.int64()), ("n_concepts", pa.int64()), ("n_boot", pa.int64()), ("seed", pa.int64()),
])

PAIRED_SCHEMA = pa.schema([
    ("method", pa.string()), ("baseline", pa.string()), ("budget", pa.int64()), ("group", pa.string()),
    ("measure", pa.string()), ("reference", pa.string()), ("difference", pa.float64()),
    ("images_low", pa.float64()), ("images_high", pa.float64()),
    ("concepts_low", pa.float64()), ("concepts_high", pa.float64()),
    ("p_value", pa.float64()), ("p_holm", pa.float64()),
    ("n_images", pa.int64()), ("n_concepts", pa.int64()), ("n_perm", pa.int64()), ("seed", pa.int64()),
])


@dataclass(frozen=True)
class ImageMatrix:
    """Rows (concept, group, image) x columns (label, measure, reference): ``num``/``den`` ``[N, K]``, the codes
    ``concept`` / ``group`` ``[N]`` and the names of both axes."""

    num: np.ndarray
    den: np.ndarray
    concept: np.ndarray
    group: np.ndarray
    concepts: list[str]
    columns: list[tuple[str, str, str]]

    def column(self, key: tuple[str, str, str]) -> int:
        return self.columns.index(key)


def _lost_pairs(outcome: ImageOutcome, named: Callable[[str, str], bool]) -> tuple[int, int]:
    """(other objects named before and not after, other objects named before) of one image."""
    lost = total = 0
    for other in outcome.present:
        if other == outcome.concept or not named(outcome.before, other):
            continue
        total += 1
        lost += not named(outcome.after, other)
    return lost, total


def image_matrix(outcomes: Sequence[ImageOutcome], metrics: Sequence[str],
                 references: Sequence[str] = ("unmodified", "ground_truth")) -> ImageMatrix:
    """The per-image numerators and denominators of every measure (module docstring)."""
    rows: dict[tuple[str, str, int], int] = {}
    for o in outcomes:
        rows.setdefault((o.concept, o.group, o.image_id), len(rows))
    labels = list(dict.fromkeys(o.method for o in outcomes))
    columns: list[tuple[str, str, str]] = [(UNMODIFIED, "mention_rate", "")]
    for label in labels:
        columns += [(label, "mention", ""), (label, "mention_rate", ""), (label, "retention", "")]
        columns += [(label, m, r) for r in references for m in metrics]
    index = {c: i for i, c in enumerate(columns)}
    num = np.zeros((len(rows), len(columns)))
    den = np.zeros_like(num)
    before_done: set[int] = set()
    seen: dict[tuple[str, str], bool] = {}

    def named(text: str, concept: str) -> bool:  # captions repeat (most are unchanged): decide each pair once
        key = (text, concept)
        if key not in seen:
            seen[key] = bool(mentions(text, concept))
        return seen[key]

    for o in outcomes:
        row = rows[(o.concept, o.group, o.image_id)]
        named_before, named_after = float(named(o.before, o.concept)), float(named(o.after, o.concept))
        if row not in before_done:
            before_done.add(row)
            k = index[(UNMODIFIED, "mention_rate", "")]
            num[row, k], den[row, k] = named_before, 1.0
        for measure, value in (("mention", named_before - named_after), ("mention_rate", named_after)):
            k = index[(o.method, measure, "")]
            num[row, k], den[row, k] = value, 1.0
        lost, total = _lost_pairs(o, named)
        k = index[(o.method, "retention", "")]
        num[row, k], den[row, k] = lost, total
        for reference in references:
            for metric in metrics:
                b, a = o.scores_before.get((metric, reference)), o.scores_after.get((metric, reference))
                if b is not None and a is not None:
                    k = index[(o.method, metric, reference)]
                    num[row, k], den[row, k] = b - a, 1.0
    concepts = sorted({key[0] for key in rows})
    code = {c: i for i, c in enumerate(concepts)}
    keys = sorted(rows, key=rows.__getitem__)
    return ImageMatrix(num, den, np.array([code[k[0]] for k in keys], dtype=int),
                       np.array([GROUPS.index(k[1]) for k in keys], dtype=int), concepts, columns)


def _groups_statistic(cells: np.ndarray) -> np.ndarray:
    """``[..., C, 2, K]`` -> ``[..., C, 3K]``: target, other, target - other of every column."""
    return np.concatenate([cells[..., 0, :], cells[..., 1, :], cells[..., 0, :] - cells[..., 1, :]], axis=-1)


def _counts(matrix: ImageMatrix, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[3, K]`` rows (or pairs) counted and concepts with any, for the target, other, and both groups."""
    n, c = np.zeros((3, den.shape[1]), dtype=int), np.zeros((3, den.shape[1]), dtype=int)
    for g in range(2):
        rows = matrix.group == g
        n[g] = den[rows].sum(axis=0)
        c[g] = [len(np.unique(matrix.concept[rows][den[rows, k] > 0])) for k in range(den.shape[1])]
    n[2] = n[0] + n[1]
    c[2] = np.minimum(c[0], c[1])
    return n, c


def _intervals(matrix: ImageMatrix, num: np.ndarray, den: np.ndarray, n_boot: int, seed: int, level: float
               ) -> tuple[np.ndarray, ...]:
    """(estimate, images low, images high, concepts low, concepts high), each ``[3, K]``."""
    args = (matrix.concept, matrix.group, len(matrix.concepts), 2, _groups_statistic)
    images = bootstrap(num, den, *args, scheme="images", n_boot=n_boot, seed=seed, level=level)
    concepts = bootstrap(num, den, *args, scheme="concepts", n_boot=n_boot, seed=seed, level=level)
    k = num.shape[1]
    return tuple(v.reshape(3, k) for v in (images.estimate, images.low, images.high, concepts.low, concepts.high))


def interval_table(matrix: ImageMatrix, n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> pa.Table:
    """`INTERVAL_SCHEMA`: one row per (label, group, measure, reference) of the average over concepts."""
    est, il, ih, cl, ch = _intervals(matrix, matrix.num, matrix.den, n_boot, seed, level)
    n, c = _counts(matrix, matrix.den)
    out = []
    for k, (label, measure, reference) in enumerate(matrix.columns):
        method, budget = split_label(label)
        for g, group in enumerate(CI_GROUPS):
            if n[g, k] == 0 or (group == "specificity" and measure == "mention_rate"):
                continue
            out.append({"method": method, "budget": budget, "group": group, "measure": measure,
                        "reference": reference, "estimate": est[g, k], "images_low": il[g, k],
                        "images_high": ih[g, k], "concepts_low": cl[g, k], "concepts_high": ch[g, k],
                        "n_images": int(n[g, k]), "n_concepts": int(c[g, k]), "n_boot": n_boot, "seed": seed})
    return pa.Table.from_pylist(out, schema=INTERVAL_SCHEMA)


def _pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(label, baseline) of every two labels at one budget (plain labels pair with plain ones)."""
    return [(a, b) for a in labels for b in labels if a != b and split_label(a)[1] == split_label(b)[1]]


def paired_table(matrix: ImageMatrix, n_boot: int = N_BOOT, n_perm: int = N_PERM, seed: int = SEED,
                 level: float = LEVEL) -> pa.Table:
    """`PAIRED_SCHEMA`: label minus baseline on the same images, per (group, measure, reference) and pair."""
    labels = list(dict.fromkeys(label for label, _, _ in matrix.columns if label != UNMODIFIED))
    measures = [(m, r) for label, m, r in matrix.columns if label == labels[0]] if labels else []
    keys, nums, dens = [], [], []
    for label, baseline in _pairs(labels):
        for measure, reference in measures:
            a, b = matrix.column((label, measure, reference)), matrix.column((baseline, measure, reference))
            both = (matrix.den[:, a] > 0) & (matrix.den[:, b] > 0)
            keys.append((label, baseline, measure, reference))
            nums.append(np.where(both, matrix.num[:, a] - matrix.num[:, b], 0.0))
            dens.append(np.where(both, matrix.den[:, a], 0.0))
    if not keys:
        return PAIRED_SCHEMA.empty_table()
    num, den = np.stack(nums, axis=1), np.stack(dens, axis=1)
    est, il, ih, cl, ch = _intervals(matrix, num, den, n_boot, seed, level)
    p = sign_flip_pvalue(num, den, matrix.concept, matrix.group, len(matrix.concepts), 2, _groups_statistic,
                         n_perm=n_perm, seed=seed).reshape(3, len(keys))
    n, c = _counts(matrix, den)
    rows = []
    for k, (label, baseline, measure, reference) in enumerate(keys):
        method, budget = split_label(label)
        for g, group in enumerate(CI_GROUPS):
            if n[g, k] == 0 or (group == "specificity" and measure == "mention_rate"):
                continue
            rows.append({"method": method, "baseline": split_label(baseline)[0], "budget": budget, "group": group,
                         "measure": measure, "reference": reference, "difference": est[g, k],
                         "images_low": il[g, k], "images_high": ih[g, k], "concepts_low": cl[g, k],
                         "concepts_high": ch[g, k], "p_value": p[g, k], "p_holm": float("nan"),
                         "n_images": int(n[g, k]), "n_concepts": int(c[g, k]), "n_perm": n_perm, "seed": seed})
    _holm_in_place_by(rows, ("method", "budget", "group", "measure", "reference"))  # across the baselines
    return pa.Table.from_pylist(rows, schema=PAIRED_SCHEMA)


# ---------------------------------------------------------------------------------------------- T - O and its area
AREA_SCHEMA = pa.schema([
    ("method", pa.string()), ("baseline", pa.string()), ("budget", pa.int64()), ("quantity", pa.string()),
    ("estimate", pa.float64()), ("images_low", pa.float64()), ("images_high", pa.float64()),
    ("concepts_low", pa.float64()), ("concepts_high", pa.float64()), ("p_value", pa.float64()),
    ("p_holm", pa.float64()), ("n_target_images", pa.int64()), ("n_other_pairs", pa.int64()),
    ("n_concepts", pa.int64()), ("n_boot", pa.int64()), ("seed", pa.int64()),
])


def area_weights(budgets: Sequence[int | None]) -> np.ndarray:
    """``[m]`` weights w with ``specificity_area = sum_j w_j * gap_j`` (trapezoids over log2 n divided by the
    log2 range, `kneuron.engine.eval.budget.specificity_area`); one budget (or a plain evaluation): ``[1]``."""
    if len(budgets) == 1:
        return np.ones(1)
    x = np.log2(np.asarray(budgets, dtype=float))
    w = np.zeros(len(x))
    steps = np.diff(x) / 2
    w[:-1] += steps
    w[1:] += steps
    return w / float(x[-1] - x[0])


def _curves(matrix: ImageMatrix) -> dict[str, list[tuple[int | None, str]]]:
    """method -> its (budget, label) in ascending budget order."""
    out: dict[str, list[tuple[int | None, str]]] = {}
    for label in dict.fromkeys(lb for lb, _, _ in matrix.columns if lb != UNMODIFIED):
        method, budget = split_label(label)
        out.setdefault(method, []).append((budget, label))
    return {m: sorted(v, key=lambda item: -1 if item[0] is None else item[0]) for m, v in out.items()}


def _combos(outputs: list[list[tuple[float, int, int]]]) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic ``[..., C, 2, K] -> [..., C, M]``: output m = sum of w * (target cell of column t - other cell
    of column o) over its (w, t, o)."""
    def statistic(cells: np.ndarray) -> np.ndarray:
        return np.stack([sum(w * (cells[..., 0, t] - cells[..., 1, o]) for w, t, o in terms) for terms in outputs],
                        axis=-1)
    return statistic


def _area_rows(matrix: ImageMatrix, num: np.ndarray, den: np.ndarray, outputs: list[list[tuple[float, int, int]]],
               n_boot: int, seed: int, level: float) -> tuple[np.ndarray, ...]:
    args = (matrix.concept, matrix.group, len(matrix.concepts), 2, _combos(outputs))
    images = bootstrap(num, den, *args, scheme="images", n_boot=n_boot, seed=seed, level=level)
    concepts = bootstrap(num, den, *args, scheme="concepts", n_boot=n_boot, seed=seed, level=level)
    return images.estimate, images.low, images.high, concepts.low, concepts.high


def _sizes(matrix: ImageMatrix, den: np.ndarray, terms: list[tuple[float, int, int]]) -> tuple[int, int, int]:
    """(target images, other-object pairs, concepts with both) of one output's columns."""
    target, other = matrix.group == 0, matrix.group == 1
    n_t = max(int(den[target, t].sum()) for _, t, _ in terms)
    n_o = max(int(den[other, o].sum()) for _, _, o in terms)
    both = [set(matrix.concept[target][den[target, t] > 0]) & set(matrix.concept[other][den[other, o] > 0])
            for _, t, o in terms]
    return n_t, n_o, min(len(b) for b in both)


def gap_table(matrix: ImageMatrix, n_boot: int = N_BOOT, n_perm: int = N_PERM, seed: int = SEED,
              level: float = LEVEL) -> pa.Table:
    """`AREA_SCHEMA`: T(n) - O(n) (quantity ``gap``, per budget) and the specificity area (quantity ``area``,
    budget None) of every method (baseline None), and the same for every method minus every other method on the
    budgets both have (baseline set; with the sign-flip p-value, Holm-adjusted across the method's baselines).
    T: the concept's mention drop on its images; O: the other images' object mentions lost (module docstring)."""
    curves = _curves(matrix)
    col = matrix.column
    outputs: list[list[tuple[float, int, int]]] = []
    keys: list[tuple[str, str | None, int | None, str]] = []
    for method, points in curves.items():
        for budget, label in points:
            outputs.append([(1.0, col((label, "mention", "")), col((label, "retention", "")))])
            keys.append((method, None, budget, "gap"))
        weights = area_weights([b for b, _ in points])
        outputs.append([(w, col((lb, "mention", "")), col((lb, "retention", ""))) for w, (_, lb) in
                        zip(weights, points, strict=True)])
        keys.append((method, None, None, "area"))
    rows = _emit(matrix, matrix.num, matrix.den, outputs, keys, None, n_boot, seed, level)
    # paired: method minus baseline, T and O columns differenced on the same images
    nums, dens, pair_outputs, pair_keys = [], [], [], []
    for method, points in curves.items():
        for baseline, other_points in curves.items():
            if baseline == method:
                continue
            theirs = dict(other_points)
            shared = [(b, lb, theirs[b]) for b, lb in points if b in theirs]
            if not shared:
                continue
            terms = []
            for budget, mine, base in shared:
                pair = []
                for measure in ("mention", "retention"):
                    a, b = col((mine, measure, "")), col((base, measure, ""))
                    both = (matrix.den[:, a] > 0) & (matrix.den[:, b] > 0)
                    nums.append(np.where(both, matrix.num[:, a] - matrix.num[:, b], 0.0))
                    dens.append(np.where(both, matrix.den[:, a], 0.0))
                    pair.append(len(nums) - 1)
                terms.append((budget, pair[0], pair[1]))
                pair_outputs.append([(1.0, pair[0], pair[1])])
                pair_keys.append((method, baseline, budget, "gap"))
            weights = area_weights([b for b, _, _ in terms])
            pair_outputs.append([(w, t, o) for w, (_, t, o) in zip(weights, terms, strict=True)])
            pair_keys.append((method, baseline, None, "area"))
    if nums:
        num, den = np.stack(nums, axis=1), np.stack(dens, axis=1)
        rows += _emit(matrix, num, den, pair_outputs, pair_keys, n_perm, n_boot, seed, level)
    _holm_in_place_by(rows, ("method", "budget", "quantity"))
    return pa.Table.from_pylist(rows, schema=AREA_SCHEMA)


def _emit(matrix: ImageMatrix, num: np.ndarray, den: np.ndarray, outputs: list[list[tuple[float, int, int]]],
          keys: Sequence[tuple[str, str | None, int | None, str]], n_perm: int | None, n_boot: int, seed: int,
          level: float) -> list[dict]:
    est, il, ih, cl, ch = _area_rows(matrix, num, den, outputs, n_boot, seed, level)
    p = (sign_flip_pvalue(num, den, matrix.concept, matrix.group, len(matrix.concepts), 2, _combos(outputs),
                          n_perm=n_perm, seed=seed) if n_perm else np.full(len(keys), np.nan))
    rows = []
    for m, (method, baseline, budget, quantity) in enumerate(keys):
        n_t, n_o, n_c = _sizes(matrix, den, outputs[m])
        rows.append({"method": method, "baseline": baseline, "budget": budget, "quantity": quantity,
                     "estimate": est[m], "images_low": il[m], "images_high": ih[m], "concepts_low": cl[m],
                     "concepts_high": ch[m], "p_value": p[m], "p_holm": float("nan"), "n_target_images": n_t,
                     "n_other_pairs": n_o, "n_concepts": n_c, "n_boot": n_boot, "seed": seed})
    return rows


def _holm_in_place_by(rows: list[dict], family: tuple[str, ...]) -> None:
    """Holm-adjust ``p_value`` within each family of rows sharing the ``family`` columns (rows with a p-value)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["p_value"] == row["p_value"]:
            groups.setdefault(tuple(row[k] for k in family), []).append(row)
    for members in groups.values():
        for row, adjusted in zip(members, holm(np.array([r["p_value"] for r in members])), strict=True):
            row["p_holm"] = float(adjusted)


@dataclass(frozen=True)
class Evidence:
    """The three evidence tables of one evaluation (`INTERVAL_SCHEMA`, `PAIRED_SCHEMA`, `AREA_SCHEMA`)."""

    intervals: pa.Table
    paired: pa.Table
    gaps: pa.Table


def evidence_tables(outcomes: Sequence[ImageOutcome], metrics: Sequence[str]) -> Evidence:
    """Intervals, paired differences and T - O / area rows of an evaluation's outcomes (seeded: equal inputs give
    equal tables)."""
    matrix = image_matrix(outcomes, metrics)
    return Evidence(interval_table(matrix), paired_table(matrix), gap_table(matrix))


SPECIFICITY_TITLE = ("T - O with 95% intervals (images within concepts / concepts) and paired against random "
                     "(sign-flip, Holm); T = target mention drop, O = other-object mention loss; over budgets: "
                     "specificity area")


def specificity_table(gaps: pa.Table, control: str = "random") -> pa.Table:
    """One row per method: its T - O (or specificity area), both intervals, n, and minus ``control`` with its
    interval and Holm p (None without a control)."""
    rows = gaps.to_pylist()
    paired = {r["method"]: r for r in rows if r["quantity"] == "area" and r["baseline"] == control}
    out = []
    for r in rows:
        if r["quantity"] != "area" or r["baseline"] is not None:
            continue
        versus = paired.get(r["method"])
        out.append({"method": r["method"], "T - O": r["estimate"], "low": r["images_low"], "high": r["images_high"],
                    "concepts low": r["concepts_low"], "concepts high": r["concepts_high"],
                    f"minus {control}": None if versus is None else versus["estimate"],
                    "diff low": None if versus is None else versus["images_low"],
                    "diff high": None if versus is None else versus["images_high"],
                    "Holm p": None if versus is None else versus["p_holm"],
                    "n target": r["n_target_images"], "n other mentions": r["n_other_pairs"],
                    "concepts": r["n_concepts"]})
    return pa.Table.from_pylist(out)


__all__ = ["AREA_SCHEMA", "CI_GROUPS", "Evidence", "INTERVAL_SCHEMA", "ImageMatrix", "PAIRED_SCHEMA",
           "SPECIFICITY_TITLE", "area_weights", "evidence_tables", "gap_table", "image_matrix", "interval_table",
           "paired_table", "specificity_table"]
