"""The budget-curve figure (matplotlib, Agg canvas; no pyplot state): how each method trades the removal of its
concept against damage to other knowledge as its neuron budget grows.

`budget_curve_plot` takes the averaged rows of `kneuron.engine.eval.budget.budget_curves` (columns method, budget,
target_mention_drop, other_mention_drop; optional ``target_low``/``target_high``/``other_low``/``other_high``: interval
bounds drawn as error bars in panels 2 and 3; other columns are ignored) and writes one PNG of three panels:

1. trade-off: x = other-object mention drop on other images O(n), y = target mention drop T(n), one line per
   method through its budgets (each point labelled n), with the diagonal T = O: points above it remove the
   concept more often than they remove other objects' mentions (specific), points on it do not;
2. T(n) against the budget (log2 axis);
3. O(n) against the budget (log2 axis), with the 5 % line of the ``target_at_5`` summary number.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps

from kneuron.engine.eval.budget import DAMAGE_LIMIT
from kneuron.engine.reporting.plots import empty_panel, need_columns, new_figure, records, save_png


def _finite(value: Any) -> float:
    return float("nan") if value is None else float(value)



def _bars(curve: list[Any], name: str, values: list[float]) -> list[list[float]] | None:
    """[[below], [above]] error-bar lengths from ``<name>_low`` / ``<name>_high`` (None when the rows have none)."""
    if not curve or f"{name}_low" not in curve[0]:
        return None
    low = [_finite(r.get(f"{name}_low")) for r in curve]
    high = [_finite(r.get(f"{name}_high")) for r in curve]
    below = [0.0 if math.isnan(v - lo) else max(v - lo, 0.0) for v, lo in zip(values, low, strict=True)]
    above = [0.0 if math.isnan(hi - v) else max(hi - v, 0.0) for v, hi in zip(values, high, strict=True)]
    return [below, above]


def budget_curve_plot(data: Any, out: str | Path, methods: Sequence[str] | None = None,
                      title: str = "Target mention drop vs damage to other images, by neuron budget") -> Path:
    """Write the three-panel budget figure of ``data`` (module docstring) to ``out``; returns the path."""
    rows = records(data)
    need_columns(rows, ("method", "budget", "target_mention_drop", "other_mention_drop"), "budget curves")
    present = list(dict.fromkeys(str(r["method"]) for r in rows))
    order = [m for m in (methods or []) if m in present] + [m for m in present if m not in (methods or [])]
    figure = new_figure(15.0, 4.6)
    if not rows:
        empty_panel(figure, "no budget evaluation")
        return save_png(figure, out)
    palette = colormaps["tab10"]
    trade, target, other = (figure.add_subplot(1, 3, i) for i in (1, 2, 3))
    top = 0.05
    for index, method in enumerate(order):
        curve = sorted((r for r in rows if str(r["method"]) == method), key=lambda r: int(r["budget"]))
        budgets = [int(r["budget"]) for r in curve]
        t = [_finite(r["target_mention_drop"]) for r in curve]
        o = [_finite(r["other_mention_drop"]) for r in curve]
        top = max([top] + [v for v in t + o if not math.isnan(v)])
        colour = palette(index % 10)
        trade.plot(o, t, marker="o", color=colour, label=method, linewidth=1.4, markersize=4)
        for n, x, y in zip(budgets, o, t, strict=True):
            if not (math.isnan(x) or math.isnan(y)):
                trade.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=colour)
        target.plot(budgets, t, marker="o", color=colour, label=method, linewidth=1.4, markersize=4)
        other.plot(budgets, o, marker="o", color=colour, label=method, linewidth=1.4, markersize=4)
        for ax, name, values in ((target, "target", t), (other, "other", o)):
            bars = _bars(curve, name, values)
            if bars is not None:
                ax.errorbar(budgets, values, yerr=bars, fmt="none", ecolor=colour, elinewidth=0.9, capsize=2)
                top = max([top] + [v + e for v, e in zip(values, bars[1], strict=True) if not math.isnan(v + e)])
    limit = top * 1.08
    trade.plot([0, limit], [0, limit], color="grey", linestyle="--", linewidth=0.8, label="T = O (not specific)")
    trade.set_xlim(-0.01, limit)
    trade.set_ylim(-0.01, limit)
    trade.set_xlabel("other-object mention drop on other images O(n)")
    trade.set_ylabel("target mention drop T(n)")
    trade.set_title("trade-off (labels: budget n)")
    trade.legend(frameon=False, fontsize=7, loc="lower right")
    for ax, name in ((target, "target mention drop T(n)"), (other, "other-object mention drop O(n)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("neuron budget n")
        ax.set_ylabel(name)
        ax.set_ylim(-0.01, limit)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(name + " vs budget")
    other.axhline(DAMAGE_LIMIT, color="grey", linestyle=":", linewidth=0.8, label="5 % damage")
    other.legend(frameon=False, fontsize=7, loc="upper left")
    figure.suptitle(title)
    figure.tight_layout()
    return save_png(figure, out)
