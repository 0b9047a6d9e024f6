"""The report's budget section: per method, target mention drop against damage to other images as the neuron
budget grows, the specificity numbers, and the run's massive units (the fragility control).

Part of `engine.pipelines.report` (``build_report`` appends `budget_section`; its figures and tables are shown
when the run has a budget evaluation, ``kneuron suppress --budgets``, else the section says it was not run).
The latest budget evaluation of the run (``queries/report_budget_evals.sql``) is summarised exactly as
``kneuron suppress`` does (`engine.eval.summary.summarize`, then `engine.eval.budget`), drawn by
`engine.budget_plots.budget_curve_plot`. The massive units are ``queries/massive_units.sql`` (k = 10) over the
run's identification images.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import queries
from engine.budget_plots import budget_curve_plot
from engine.document import Figure, Section, Table, Text, fmt
from engine.eval.budget import budget_curves, curve_scores, curve_table, split_label
from engine.pipelines.run import RunReader
from queries.selection import MASSIVE_K

SECTION = ("budget", "Budget curves and specificity")


def latest_budget_eval(run: RunReader, eval_id: str | None = None) -> dict[str, Any] | None:
    """The newest budget evaluation of the run (eval_id, created_at, n_labels, n_concepts), or the one named
    ``eval_id``; None when there is none."""
    rows = [r for r in run.query("report_budget_evals").to_pylist() if eval_id is None or r["eval_id"] == eval_id]
    return rows[0] if rows else None


def evaluated_methods(run: RunReader, eval_id: str) -> list[str]:
    """The methods of an evaluation in the order its config listed them (from ``evals.config_json``)."""
    rows = queries.run(run.con, "suppress_eval_row", {"eval_id": eval_id}).to_pylist()
    try:
        methods = json.loads(rows[0]["config_json"]).get("methods") if rows else None
    except (ValueError, AttributeError):
        return []
    return [str(m) for m in methods] if isinstance(methods, list) else []


def budget_section(run: RunReader, dataset: Any, out_dir: Path, eval_id: str | None = None
                   ) -> tuple[Section, dict[str, Any]]:
    """(the section, its summary-json entry: {} when the run has no budget evaluation).

    eval_id: show this budget evaluation of the run instead of the latest one.
    """
    found = latest_budget_eval(run, eval_id)
    if found is None:
        return Section(*SECTION, [Text("Budget evaluation: not run (no `kneuron suppress --budgets 1,2,4,8,16,32` "
                                       "for this run).")]), {}
    eval_id = found["eval_id"]
    evaluation = run.evaluation(eval_id, dataset)
    outcomes = evaluation.outcomes
    curves = budget_curves(evaluation.summary)
    methods = evaluated_methods(run, eval_id) or list(dict.fromkeys(split_label(o.method)[0] for o in outcomes))
    averaged = curve_table(curves, methods=methods)
    numbers = curve_scores(curves, methods=methods)
    out = Section(*SECTION)
    out.blocks.append(Text(
        f"Budget evaluation {eval_id} ({found['n_concepts']} concepts, {found['n_labels']} method@budget sets; the "
        "latest of this run): every method's set at each budget n, suppressed while captioning the concept's "
        "evaluation images (target) and images without it (other). T(n) = drop of the concept's mention rate on "
        "target images; O(n) = share of the other images' object mentions lost; both vs the unmodified captions, "
        "averaged over concepts. A specific set has T well above O."))
    if dataset is None:
        out.blocks.append(Text("Note: the run's dataset is not available, so O(n) (which needs the objects of each "
                               "image) is not computed."))
    figure = budget_curve_plot(averaged, out_dir / "figures" / "budget-curves.png", methods=methods)
    out.blocks.append(Figure(figure, "Left: T(n) against O(n), one line per method through its budgets (labels: "
                                     "n); above the diagonal = specific. Middle and right: T(n) and O(n) against n."))
    out.blocks.append(Table(
        ["method", "budgets", "specificity area", "largest n with O <= 5%", "T there", "max T - O", "at n"],
        [[r["method"], r["budgets"], fmt(r["specificity_area"]), fmt(r["budget_at_5"]), fmt(r["target_at_5"]),
          fmt(r["max_gap"]), fmt(r["budget_at_max_gap"])] for r in numbers.to_pylist()],
        caption="specificity area: mean of T(n) - O(n) over log2 n (trapezoids, divided by the log2 range; 0 = not "
                "specific, 1 = every target mention gone and no other); largest n with O <= 5%: O stays <= 5% at "
                "every budget up to n"))
    out.blocks.append(Table(
        ["method", "n", "neurons", "T(n)", "O(n)", "BLEU-4 drop other", "BERTScore drop other", "T - O"],
        [[r["method"], r["budget"], fmt(r["n_neurons"]), fmt(r["target_mention_drop"]), fmt(r["other_mention_drop"]),
          fmt(r["other_bleu4_drop"]), fmt(r["other_bertscore_drop"]), fmt(r["gap"])] for r in averaged.to_pylist()],
        caption="budget curves (mean over concepts); neurons < n when a method's pool is smaller than n"))
    massive = queries.run(run.con, "massive_units", {"run_id": run.run_id, "k": MASSIVE_K}).to_pylist()
    out.blocks.append(Table(
        ["layer", "unit", "mean |activation|", "x median unit"],
        [[r["layer"], r["unit"], fmt(r["magnitude"]), fmt(r["ratio"])] for r in massive],
        caption=f"massive units of model {run.row.get('model_name')} (mean |activation| over the identification "
                f"images > {MASSIVE_K:g} x the median unit; `kneuron sql -q massive_units`): "
                f"{len(massive)} unit(s); random_nonmassive never draws them"))
    entry = {"eval_id": eval_id, "scores": numbers.to_pylist(), "massive_units": [[r["layer"], r["unit"]]
                                                                                  for r in massive]}
    return out, entry
