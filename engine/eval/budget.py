"""Budget curves: every method evaluated at several neuron budgets n, and one specificity number per method.

In a budget evaluation (``EvalConfig.budgets``, ``kneuron suppress --budgets 1,2,4,8``) each (method, n) is its own
neuron set and its own *label* ``"<method>@<n>"`` (`label`, `split_label`) in the ``captions`` / ``scores`` /
``neuron_sets`` rows, so the ordinary summary (`kneuron.engine.eval.summary.summarize`) has one "method" per label.
Pure:
this module reshapes that summary.

Per (concept, method, n), from the summary rows (all vs the unmodified model's captions; rate units, x100 =
points), `budget_curves`:

- ``target_mention_drop`` T(n): share of target images whose caption names the concept before minus after;
- ``other_mention_drop`` O(n): on the *other* images (without the concept), the share of their objects'
  mentions lost (1 - retention of the objects named before): the damage to other knowledge, in the same
  units as T;
- ``other_bleu4_drop`` / ``other_bertscore_drop``: BLEU-4 / BERTScore F1 drop on the other images;
- ``n_neurons``: the set's actual size (smaller than n when a method's pool is smaller: two_stage at n > |C_k|);
- ``gap`` = T(n) - O(n).
Rows with concept ``"*"`` average the concepts' rows (NaN left out), as the summary does.

Summary numbers per method (`curve_scores`, on the ``"*"`` curve; budgets n_1 < ... < n_m):

- ``specificity_area`` = the area between the T curve and the O curve over log2 n, divided by the log2 range:
  sum_j [(gap_j + gap_{j+1}) / 2] * (log2 n_{j+1} - log2 n_j) / (log2 n_m - log2 n_1)  (trapezoids); with one
  budget it is gap_1. In [-1, 1]: 0 = the set removes the concept as often as it removes other objects'
  mentions (not specific), 1 = every target mention gone and no other one. NaN when a T or O is NaN.
- ``budget_at_5`` / ``target_at_5``: the largest n such that O(m) <= 0.05 for every budget m <= n ("other
  damage stays <= 5 %"), and T at that n; None when O already exceeds 5 % at n_1 (NaN counts as exceeding).
- ``max_gap`` / ``budget_at_max_gap``: the largest gap and its (smallest) budget.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from kneuron.engine.errors import KneuronError

SEPARATOR = "@"
ALL_CONCEPTS = "*"
DAMAGE_LIMIT = 0.05

CURVE_SCHEMA = pa.schema([
    ("concept", pa.string()),
    ("method", pa.string()),
    ("budget", pa.int64()),
    ("n_neurons", pa.float64()),
    ("target_mention_drop", pa.float64()),
    ("other_mention_drop", pa.float64()),
    ("other_bleu4_drop", pa.float64()),
    ("other_bertscore_drop", pa.float64()),
    ("gap", pa.float64()),
])

SCORE_SCHEMA = pa.schema([
    ("method", pa.string()),
    ("budgets", pa.string()),
    ("specificity_area", pa.float64()),
    ("budget_at_5", pa.int64()),
    ("target_at_5", pa.float64()),
    ("max_gap", pa.float64()),
    ("budget_at_max_gap", pa.int64()),
])

#: curve column -> (summary group, measure, reference) it is read from
_SOURCES: dict[str, tuple[str, str, str]] = {
    "target_mention_drop": ("target", "mention", ""),
    "other_mention_drop": ("other", "retention", ""),
    "other_bleu4_drop": ("other", "bleu4", "unmodified"),
    "other_bertscore_drop": ("other", "bertscore", "unmodified"),
}


# ---------------------------------------------------------------------------------------------- labels
def label(method: str, budget: int) -> str:
    """``"two_stage@8"``: the label of ``method`` at budget ``budget``."""
    return f"{method}{SEPARATOR}{int(budget)}"


def split_label(text: str) -> tuple[str, int | None]:
    """(method, budget) of a label; (text, None) for a plain method name."""
    method, sep, number = text.rpartition(SEPARATOR)
    if not sep or not number.isdigit():
        return text, None
    return method, int(number)


def check_budgets(values: Iterable[Any]) -> tuple[int, ...]:
    """Budgets as ascending whole numbers >= 1, each once; `KneuronError` naming the first bad value."""
    out: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KneuronError(f"budgets must be whole numbers >= 1, got {value!r}")
        if value in out:
            raise KneuronError(f"budget {value} listed twice")
        out.append(int(value))
    return tuple(sorted(out))


def parse_budgets(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8) (`check_budgets`)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise KneuronError(f"--budgets needs whole numbers separated by commas, got {text!r}")
    try:
        return check_budgets(int(p) for p in parts)
    except ValueError:
        raise KneuronError(f"--budgets needs whole numbers separated by commas, got {text!r}") from None


# ---------------------------------------------------------------------------------------------- curves
def budget_curves(summary: pa.Table) -> pa.Table:
    """`CURVE_SCHEMA` rows of every labelled method of a summary (`kneuron.engine.eval.summary.SUMMARY_SCHEMA`), per
    concept
    and averaged (``"*"``), ordered by concept (``"*"`` first), method, budget."""
    found: dict[tuple[str, str, int], dict[str, float]] = {}
    for row in summary.to_pylist():
        method, budget = split_label(row["method"])
        if budget is None:
            continue
        entry = found.setdefault((row["concept"], method, budget), {})
        entry.setdefault("n_neurons", row["n_neurons"])
        for column, (group, measure, reference) in _SOURCES.items():
            if (row["group"], row["measure"], row["reference"]) == (group, measure, reference):
                entry[column] = row["drop"]
    rows = []
    for (concept, method, budget), entry in found.items():
        values = {column: _float(entry.get(column)) for column in _SOURCES}
        rows.append({"concept": concept, "method": method, "budget": budget, "n_neurons": _float(entry["n_neurons"]),
                     **values, "gap": values["target_mention_drop"] - values["other_mention_drop"]})
    rows.sort(key=lambda r: (r["concept"] != ALL_CONCEPTS, r["concept"], r["method"], r["budget"]))
    return pa.Table.from_pylist(rows, schema=CURVE_SCHEMA)


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


# ---------------------------------------------------------------------------------------------- summary numbers
def specificity_area(budgets: Sequence[int], target: Sequence[float], other: Sequence[float]) -> float:
    """Normalised area between the target-drop and other-damage curves over log2 budget (module docstring)."""
    if not len(budgets) or len(budgets) != len(target) or len(budgets) != len(other):
        raise ValueError("budgets, target and other must be non-empty and of one length")
    gap = np.asarray(target, dtype=float) - np.asarray(other, dtype=float)
    if np.isnan(gap).any():
        return float("nan")
    if len(budgets) == 1:
        return float(gap[0])
    x = np.log2(np.asarray(budgets, dtype=float))
    area = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(x)))
    return area / float(x[-1] - x[0])


def target_within_damage(budgets: Sequence[int], target: Sequence[float], other: Sequence[float],
                         limit: float = DAMAGE_LIMIT) -> tuple[int | None, float | None]:
    """(largest n with other damage <= ``limit`` at every budget up to n, T at n); (None, None) if none."""
    best: tuple[int | None, float | None] = (None, None)
    for n, t, o in zip(budgets, target, other, strict=True):
        if math.isnan(o) or o > limit:
            break
        best = (int(n), float(t))
    return best


def curve_scores(curves: pa.Table, concept: str = ALL_CONCEPTS, methods: Sequence[str] | None = None) -> pa.Table:
    """`SCORE_SCHEMA`: the summary numbers of each method's curve for ``concept`` (default: the average)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in curves.to_pylist():
        if row["concept"] == concept:
            by_method.setdefault(row["method"], []).append(row)
    order = [m for m in (methods or []) if m in by_method] + sorted(m for m in by_method if m not in (methods or []))
    out = []
    for method in order:
        rows = sorted(by_method[method], key=lambda r: r["budget"])
        budgets = [r["budget"] for r in rows]
        target = [r["target_mention_drop"] for r in rows]
        other = [r["other_mention_drop"] for r in rows]
        at, value = target_within_damage(budgets, target, other)
        gaps = [r["gap"] for r in rows]
        finite = [(g, b) for g, b in zip(gaps, budgets, strict=True) if not math.isnan(g)]
        best = max(finite, key=lambda item: (item[0], -item[1])) if finite else (float("nan"), None)
        out.append({"method": method, "budgets": ",".join(str(b) for b in budgets),
                    "specificity_area": specificity_area(budgets, target, other), "budget_at_5": at,
                    "target_at_5": value, "max_gap": best[0], "budget_at_max_gap": best[1]})
    return pa.Table.from_pylist(out, schema=SCORE_SCHEMA)


def curve_table(curves: pa.Table, concept: str = ALL_CONCEPTS, methods: Sequence[str] | None = None) -> pa.Table:
    """The ``concept`` rows of `budget_curves` (without the concept column), methods in ``methods`` order."""
    rows = [{k: v for k, v in r.items() if k != "concept"} for r in curves.to_pylist() if r["concept"] == concept]
    rank = {m: i for i, m in enumerate(methods or [])}
    rows.sort(key=lambda r: (rank.get(r["method"], len(rank)), r["method"], r["budget"]))
    return pa.Table.from_pylist(rows, schema=pa.schema([f for f in CURVE_SCHEMA if f.name != "concept"]))


def budget_tables(summary: pa.Table, methods: Sequence[str] | None = None) -> Mapping[str, pa.Table]:
    """The tables `kneuron suppress --budgets` prints: the averaged curves and the summary numbers."""
    curves = budget_curves(summary)
    return {"budget curves (mean over concepts; drops vs the unmodified captions)":
            curve_table(curves, methods=methods),
            "specificity per method (T = target mention drop, O = other-object mention drop on other images)":
            curve_scores(curves, methods=methods)}


__all__ = ["CURVE_SCHEMA", "DAMAGE_LIMIT", "SCORE_SCHEMA", "budget_curves", "budget_tables", "check_budgets",
           "curve_scores", "curve_table", "label", "parse_budgets", "specificity_area", "split_label",
           "target_within_damage"]
