"""The report's budget section: per method, target mention drop against damage to other images as the neuron
budget grows, the specificity numbers, and the run's massive units (the fragility control).

Part of `kneuron.engine.pipelines.report.pipeline` (``build_report`` appends `budget_section`; its figures and tables
are shown
when the run has a budget evaluation, ``kneuron suppress --budgets``, else the section says it was not run).
Every budget evaluation of the run (``queries/report_budget_evals.sql``, latest first) is summarised exactly as
``kneuron suppress`` does (`kneuron.engine.eval.summary.summarize`, then `kneuron.engine.eval.budget`), drawn by
`kneuron.engine.reporting.budget_plots.budget_curve_plot`, with the intervals of
`kneuron.engine.pipelines.report.evidence`. The massive
units are ``queries/massive_units.sql`` (k = 10) over the run's identification images.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kneuron import queries
from kneuron.engine.eval.budget import budget_curves, curve_scores, curve_table, split_label
from kneuron.engine.pipelines.report.evidence import ci, load_evidence, value
from kneuron.engine.pipelines.run import RunReader
from kneuron.engine.reporting.budget_plots import budget_curve_plot
from kneuron.engine.reporting.document import Block, Figure, Section, Table, Text, fmt, slug
from kneuron.queries.selection import MASSIVE_K

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

    Every budget evaluation of the run, latest first (eval_id: only this one). The summary entry is the latest's,
    with ``evaluations``: the ids shown.
    """
    found = [r for r in run.query("report_budget_evals").to_pylist() if eval_id is None or r["eval_id"] == eval_id]
    if not found:
        return Section(*SECTION, [Text("Budget evaluation: not run (no `kneuron suppress --budgets 1,2,4,8,16,32` "
                                       "for this run).")]), {}
    out = Section(*SECTION)
    entry: dict[str, Any] = {}
    for index, row in enumerate(found):
        blocks, one = evaluation_blocks(run, dataset, out_dir, row, latest=index == 0, total=len(found))
        out.blocks.extend(blocks)
        if index == 0:
            entry = one
    entry["evaluations"] = [r["eval_id"] for r in found]
    return out, entry


def evaluation_blocks(run: RunReader, dataset: Any, out_dir: Path, found: dict[str, Any], latest: bool, total: int
                      ) -> tuple[list[Block], dict[str, Any]]:
    """The figure and tables of one budget evaluation, and its summary-json entry."""
    eval_id = found["eval_id"]
    evaluation = run.evaluation(eval_id, dataset)
    outcomes = evaluation.outcomes
    curves = budget_curves(evaluation.summary)
    methods = evaluated_methods(run, eval_id) or list(dict.fromkeys(split_label(o.method)[0] for o in outcomes))
    evidence, note = load_evidence(run, eval_id, evaluation)
    gaps = evidence.gaps.to_pylist()
    bounds = curve_bounds(evidence.intervals.to_pylist(), gaps)
    averaged = curve_table(curves, methods=methods)
    numbers = curve_scores(curves, methods=methods)
    which = "the latest of this run" if latest else "an earlier one"
    blocks: list[Block] = [Text(
        f"Budget evaluation {eval_id} ({fmt(found['created_at'])}; {found['n_concepts']} concepts, "
        f"{found['n_labels']} method@budget sets; {found['ablation']} ablation; {which}, {total} in all, latest "
        "first): every method's set at each budget n, suppressed while captioning the concept's evaluation images "
        "(target) and images without it (other). T(n) = drop of the concept's mention rate on target images; O(n) = "
        "share of the other images' object mentions lost; both vs the unmodified captions, averaged over concepts. "
        "A specific set has T well above O. " + note)]
    if dataset is None:
        blocks.append(Text("Note: the run's dataset is not available, so O(n) (which needs the objects of each "
                           "image) is not computed."))
    with_bars = [{**r, **bounds.get((r["method"], r["budget"]), {})} for r in averaged.to_pylist()]
    name = "budget-curves.png" if latest else f"budget-curves-{slug(eval_id)}.png"
    figure = budget_curve_plot(with_bars, out_dir / "figures" / name, methods=methods)
    blocks.append(Figure(figure, "Left: T(n) against O(n), one line per method through its budgets (labels: n); "
                                 "above the diagonal = specific. Middle and right: T(n) and O(n) against n, error "
                                 "bars: 95% intervals (images resampled within concepts)."))
    areas = {r["method"]: r for r in gaps if r["quantity"] == "area" and r["baseline"] is None}
    blocks.append(Table(
        ["method", "budgets", "specificity area", "95% CI (images)", "95% CI (concepts)", "n target images",
         "concepts", "largest n with O <= 5%", "T there", "max T - O", "at n"],
        [[r["method"], r["budgets"], fmt(r["specificity_area"]), ci(areas.get(r["method"], {})),
          ci(areas.get(r["method"], {}), "concepts"), areas.get(r["method"], {}).get("n_target_images"),
          areas.get(r["method"], {}).get("n_concepts"), fmt(r["budget_at_5"]), fmt(r["target_at_5"]),
          fmt(r["max_gap"]), fmt(r["budget_at_max_gap"])] for r in numbers.to_pylist()],
        caption="specificity area: mean of T(n) - O(n) over log2 n (trapezoids, divided by the log2 range; 0 = not "
                "specific, 1 = every target mention gone and no other); largest n with O <= 5%: O stays <= 5% at "
                "every budget up to n"))
    paired = sorted((r for r in gaps if r["quantity"] == "area" and r["baseline"] is not None),
                    key=lambda r: (methods.index(r["method"]) if r["method"] in methods else len(methods),
                                   methods.index(r["baseline"]) if r["baseline"] in methods else len(methods)))
    blocks.append(Table(
        ["method", "baseline", "area difference", "95% CI (images)", "95% CI (concepts)", "p", "Holm p"],
        [[r["method"], r["baseline"], value(r["estimate"]), ci(r), ci(r, "concepts"), fmt(r["p_value"]),
          fmt(r["p_holm"])] for r in paired],
        caption="paired differences of the specificity area, method minus baseline on the same images (sign-flip "
                "p-value, Holm-adjusted across the method's baselines)", folded=True))
    blocks.append(Table(
        ["method", "n", "neurons", "T(n)", "T 95% CI", "O(n)", "O 95% CI", "T - O", "T - O 95% CI", "n target",
         "n other mentions", "BLEU-4 drop other", "BERTScore drop other"],
        [[r["method"], r["budget"], fmt(r["n_neurons"]), fmt(r["target_mention_drop"]), r.get("t_ci", "—"),
          fmt(r["other_mention_drop"]), r.get("o_ci", "—"), fmt(r["gap"]), r.get("gap_ci", "—"),
          r.get("n_target"), r.get("n_other"), fmt(r["other_bleu4_drop"]), fmt(r["other_bertscore_drop"])]
         for r in with_bars],
        caption="budget curves (mean over concepts; 95% intervals: images resampled within concepts); neurons < n "
                "when a method's pool is smaller than n"))
    if latest:
        massive = queries.run(run.con, "massive_units", {"run_id": run.run_id, "k": MASSIVE_K}).to_pylist()
        blocks.append(Table(
            ["layer", "unit", "mean |activation|", "x median unit"],
            [[r["layer"], r["unit"], fmt(r["magnitude"]), fmt(r["ratio"])] for r in massive],
            caption=f"massive units of model {run.row.get('model_name')} (mean |activation| over the identification "
                    f"images > {MASSIVE_K:g} x the median unit; `kneuron sql -q massive_units`): "
                    f"{len(massive)} unit(s); random_nonmassive never draws them"))
    else:
        massive = []
    entry = {"eval_id": eval_id, "scores": numbers.to_pylist(), "specificity_area": list(areas.values()),
             "massive_units": [[r["layer"], r["unit"]] for r in massive]}
    return blocks, entry


def curve_bounds(intervals: list[dict[str, Any]], gaps: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(method, n) -> the error-bar bounds of T and O (``target_low`` ...), their interval texts and n."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for r in intervals:
        if r["budget"] is None:
            continue
        entry = out.setdefault((r["method"], r["budget"]), {})
        if (r["group"], r["measure"]) == ("target", "mention"):
            entry.update(target_low=r["images_low"], target_high=r["images_high"], t_ci=ci(r), n_target=r["n_images"])
        elif (r["group"], r["measure"]) == ("other", "retention"):
            entry.update(other_low=r["images_low"], other_high=r["images_high"], o_ci=ci(r), n_other=r["n_images"])
    for r in gaps:
        if r["quantity"] == "gap" and r["baseline"] is None and r["budget"] is not None:
            out.setdefault((r["method"], r["budget"]), {})["gap_ci"] = ci(r)
    return out
