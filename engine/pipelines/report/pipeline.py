"""The report of one warehouse run: one self-contained HTML page and a Markdown file with its PNGs beside it.

    result = build_report("kneuron-warehouse", "report", ReportConfig())
    result.html, result.markdown, result.summary  # paths and the headline numbers (also in summary.json)

Sections (HTML ids), the answer first and the configuration last: ``answer`` (the headline: model, run,
concepts and the comparison the latest evaluation supports, with intervals and n; `answer_section`),
``selection`` (set sizes per concept and method, the set ids shown, layer distribution), ``suppression`` (mean
scores of the latest evaluation per method, or "not run"), ``budget`` (budget curves, when the run has a budget
evaluation), ``plots`` (layer distribution, concept overlap, suppression drops), ``heatmaps`` (original |
inpainted with the concept's neuron set and a colour bar, a few evaluation images per concept), ``contrast``
(share of images whose heatmap is brighter on the concept's object than elsewhere, per concept and method),
``decoding`` (top tokens of each concept's strongest neurons, concept-word hit rates), ``configuration`` (the
runs row and its config, folded). Every table says what its less obvious columns mean (`Table.notes`); numbers
print with 3 significant digits (`kneuron.engine.reporting.document.fmt`).

The sets shown are the run's current sets (`kneuron.engine.pipelines.sets.current_set_ids`: the latest chosen by
``kneuron select``, else the latest stored), except the ``ReportConfig.method`` sets named by
``ReportConfig.set_ids``. The chance level of the contrast and hit-rate tables is the run's stored ``random``
baseline set of each concept (stored by ``kneuron suppress``); a run without one says so.

Data come from the warehouse through the bundled queries (``queries/report_*.sql``); heatmaps and decoding
need the run's model (loaded from the name or folder the run recorded, or ``ReportConfig.model``) and, for
heatmaps, the run's dataset and inpainter (both from ``runs.config_json``). Without them those sections say why
they are missing; the rest of the report is still written. Rendering is `kneuron.engine.reporting.render` (no script, no
external resource).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.budget import split_label
from kneuron.engine.pipelines.report.budget import budget_section
from kneuron.engine.pipelines.report.config import ReportConfig
from kneuron.engine.pipelines.report.evidence import interval_blocks, load_evidence
from kneuron.engine.pipelines.report.model import model_sections
from kneuron.engine.pipelines.report.result import Report
from kneuron.engine.pipelines.run import RunReader
from kneuron.engine.pipelines.sets import StoredSet
from kneuron.engine.reporting.document import (
    Code,
    Figure,
    Headline,
    Section,
    Table,
    Text,
    figures,
    fmt,
    json_ready,
    number,
)
from kneuron.engine.reporting.render import render_html, render_markdown

SECTIONS: tuple[tuple[str, str], ...] = (
    ("answer", "The answer"),
    ("selection", "Selection summary"),
    ("suppression", "Suppression"),
    ("budget", "Budget curves and specificity"),
    ("plots", "Plots"),
    ("heatmaps", "Activation heatmaps"),
    ("contrast", "Heatmap contrast"),
    ("decoding", "Decoded tokens"),
    ("configuration", "Run configuration"),
)
RUN_FIELDS = ("run_id", "created_at", "model_name", "model_hash", "hook_site", "prompt", "positions", "n_positions",
              "n_layers", "d_ff", "dtype", "inpainter", "kneuron_version")


#: what the selection table's columns mean (|C_k| differs by method)
SELECTION_NOTES = {
    "images": "identification images the selection read",
    "|C_k|": "the stage-1 pool stage 2 picks from. two_stage: the neurons whose activation drop Δ passes "
             "threshold_a (the candidates C_k); stage1_only: stage 1 alone cut to the budget |N_k|, so the pool is "
             "the set itself; stage2_only: no stage-1 filter, so every FFN unit of the model (layers × d_ff) is a "
             "candidate",
    "selected": "neurons in the set: |N_k| for two_stage, the same budget for its baselines",
    "threshold_a": "stage-1 threshold applied to Δ = O'_o − O'_i (— where stage 1 is off)",
    "threshold_g": "stage-2 threshold applied to the GradCAM score g_c (— where stage 2 is off)",
}


#: the lines under the suppression tables (a family of columns each; every column also has its own tooltip)
SUPPRESSION_LEGEND = {
    "scores": ["target …: on the evaluation images of the set's concept; other …: on the evaluation images of the "
               "other concepts (means over images, then over concepts).",
               "BLEU-4 / ROUGE-L / BERTScore: score (0-1) of the caption against the table's reference; mention: "
               "share of captions that name the concept; retention: share of the other objects named before "
               "suppression that are still named after.",
               "neurons: the method's set size, its concept's two_stage |N_k| (mean over concepts)."],
    "drops": ["drop target / drop other: before − after on the set's concept's images / on other images (a specific "
              "set: a large drop on target, a small one on other); specificity: drop target − drop other."],
}


def column_note(column: str) -> str:
    """What a column of the suppression tables (`kneuron.engine.eval.summary.paper_tables`) means; "" if obvious."""
    if column == "neurons":
        return "size of the method's set (the budget: |N_k| of the concept's two_stage set, mean over concepts)"
    group, _, measure = column.partition(" ")
    images = {"target": "images of the set's concept", "other": "evaluation images of the other concepts"}
    if column.endswith(" drop target"):
        return "before − after on target images (higher: the set changes the concept's captions more)"
    if column.endswith(" drop other"):
        return "before − after on other images (lower: the set leaves the rest alone)"
    if column.endswith(" specificity"):
        return "drop target − drop other (higher: more specific suppression)"
    if group in images and measure == "mention":
        return f"share of captions that name the concept, on {images[group]}"
    if group in images and measure == "retention":
        return (f"share of the other objects named before suppression that are still named after, on "
                f"{images[group]}")
    if group in images and measure:
        return f"mean {measure} of the captions, on {images[group]}"
    return ""


def section(section_id: str) -> Section:
    """An empty section of the report, titled as in `SECTIONS`."""
    return Section(section_id, dict(SECTIONS)[section_id])


# ---------------------------------------------------------------------------------------------- the sets shown
def shown_sets(run: RunReader, config: ReportConfig) -> tuple[dict[tuple[str, str], StoredSet], set[str]]:
    """((concept, method) -> set shown, the ids given by ``config.set_ids``): the run's current sets, with the
    given ``config.method`` sets in place of their concepts' current ones."""
    sets = run.current_sets()
    given = run.sets(list(dict.fromkeys(config.set_ids)))
    chosen: dict[tuple[str, str], str] = {}
    for set_id, stored in given.items():
        if stored.method != config.method:
            raise KneuronError(f"set {set_id} is a {stored.method} set; the report shows {config.method} sets "
                               f"(give --method {stored.method} to show it)")
        key = (stored.concept, stored.method)
        if key in chosen:
            raise KneuronError(f"sets {chosen[key]} and {set_id} are both {stored.method} sets of concept "
                               f"{stored.concept!r}; give at most one per concept")
        chosen[key] = set_id
        sets[key] = stored
    return dict(sorted(sets.items())), set(given)


def set_ids_of(sets: dict[tuple[str, str], StoredSet], method: str | None = None) -> list[str]:
    return [s.set_id for (_, m), s in sets.items() if method is None or m == method]


# ---------------------------------------------------------------------------------------------- sections
def configuration_section(run: RunReader) -> Section:
    """The runs row and the run's config JSON, folded (the page ends with it)."""
    out = section("configuration")
    out.folded = True
    out.summary = f"show the run's configuration ({len([n for n in RUN_FIELDS if n in run.row])} fields" + (
        " and its config_json)" if run.config else ")")
    out.blocks.append(Table(["field", "value"], [[name, fmt(run.row.get(name))] for name in RUN_FIELDS
                                                 if name in run.row]))
    if run.config:
        out.blocks.append(Code("config_json", json.dumps(run.config, indent=2, sort_keys=True, default=str)))
    return out


def selection_section(run: RunReader, method: str, sets: dict[tuple[str, str], StoredSet], given: set[str]
                      ) -> tuple[Section, Any]:
    """Set sizes, the ids of the sets shown and the layers of the ``method`` sets. Returns (section, layer rows)."""
    sizes = run.query("report_set_sizes", set_ids=set_ids_of(sets)).to_pylist()
    layers = run.query("report_layers", set_ids=set_ids_of(sets, method))
    out = section("selection")
    if not sizes:
        out.blocks.append(Text("No neuron sets in this run yet: run `kneuron select`."))
        return out, layers
    selected = [r for r in sizes if r["n_images"] is not None]  # sets of `kneuron select` (not the suppress baselines)
    others = sorted({r["method"] for r in sizes} - {r["method"] for r in selected})
    out.blocks.append(Text("Current neuron set per concept and method: identification images used, stage-1 "
                           "candidates |C_k|, selected neurons (the set's size) and the thresholds applied."
                           + (f" The baselines stored by `kneuron suppress` ({', '.join(others)}) have their "
                              "concept's budget and no stage-1 pool or thresholds; the sets table below lists them."
                              if others else "")))
    out.blocks.append(Table(
        ["concept", "method", "images", "|C_k|", "selected", "threshold_a", "threshold_g"],
        [[r["concept"], r["method"], r["n_images"], r["n_candidates"], r["n_selected"], r["threshold_a"],
          r["threshold_g"]] for r in selected or sizes], notes=SELECTION_NOTES))
    out.blocks.append(Table(
        ["concept", "method", "set_id", "neurons", "shown because"],
        [[concept, m, s.set_id, len(s.neurons), "--set" if s.set_id in given else "current"]
         for (concept, m), s in sets.items()],
        caption="neuron sets shown in this report (current: the latest chosen by `kneuron select`, else the "
                "latest stored; --set: named when the report was written)", folded=len(sets) > 12))
    per_concept: dict[str, list[str]] = {}
    for r in layers.to_pylist():
        per_concept.setdefault(r["concept"], []).append(f"{r['layer']}:{r['n_neurons']}")
    if per_concept:
        out.blocks.append(Table(["concept", f"layers of the {method} set (layer:count)"],
                                [[c, " ".join(v)] for c, v in per_concept.items()]))
    return out, layers


def suppression_section(run: RunReader, dataset: Any) -> tuple[Section, list[dict[str, Any]],
                                                                list[dict[str, Any]], dict[str, Any]]:
    """The latest evaluation of the run with suppressed captions, summarised by `kneuron.engine.eval.summary` exactly
    as `kneuron suppress` does. Returns (section, plot rows, mention rows, summary entry)."""
    from kneuron.engine.eval.summary import ALL_CONCEPTS, METRIC_LABELS, paper_tables

    out = section("suppression")
    evals = [e for e in run.query("report_evals").to_pylist() if e["n_suppressed"]]
    if not evals:
        out.blocks.append(Text("Suppression evaluation: not run (no suppressed captions for this run; run "
                               "`kneuron suppress`)."))
        return out, [], [], {}
    eval_id = evals[0]["eval_id"]
    evaluation = run.evaluation(eval_id, dataset)
    metrics, summary = evaluation.metrics, evaluation.summary
    methods = list(dict.fromkeys(o.method for o in evaluation.outcomes))
    out.blocks.append(Text(
        f"Evaluation {eval_id} ({evals[0]['n_concepts']} concepts, {evals[0]['n_methods']} methods; "
        f"{evals[0]['ablation']} ablation; {len(evals)} evaluation(s) of this run, the latest is shown): captions "
        "with each method's neuron set suppressed, scored against the unmodified model's captions and the ground "
        "truth, on images of the set's concept (target: a low score and a large mention drop mean strong "
        "suppression) and on other images (other: a high score and retention mean the rest is kept). Averages over "
        "concepts."))
    writer = being_written(run)
    if writer is not None:
        out.blocks.append(Text(f"Note: evaluation {eval_id} may still be being written: kneuron process {writer} "
                               "holds the warehouse's writer lock while this report is made, so the numbers below "
                               "can be partial. Make the report again when it has finished."))
    if dataset is None:
        out.blocks.append(Text("Note: the run's dataset is not available, so other-object retention is not "
                               "computed."))
    for title, table in paper_tables(summary, metrics=metrics, methods=methods).items():
        if title.startswith("drops"):  # the mention columns first: they answer the report's question
            names = table.column_names
            table = table.select(names[:1] + [c for c in names[1:] if c.startswith("mention")]
                                 + [c for c in names[1:] if not c.startswith("mention")])
        out.blocks.append(Table(table.column_names, [list(r.values()) for r in table.to_pylist()], caption=title,
                                notes={c: n for c in table.column_names if (n := column_note(c))},
                                legend=SUPPRESSION_LEGEND["drops" if title.startswith("drops") else "scores"]))
    evidence, note = load_evidence(run, eval_id, evaluation)
    labels = [split_label(m) for m in methods]
    budgets = sorted({b for _, b in labels if b is not None})
    if not budgets:  # a budget evaluation's intervals are in the budget section
        out.blocks.append(Text(note))
        out.blocks.extend(interval_blocks(evidence, [m for m, _ in labels]))
    rows = [r for r in summary.to_pylist() if r["concept"] == ALL_CONCEPTS]
    plot_rows = [{"method": r["method"], "group": r["group"], "metric": METRIC_LABELS.get(r["measure"], r["measure"]),
                  "value": r["drop"]} for r in rows
                 if r["measure"] in metrics and r["reference"] == "unmodified" and r["group"] in ("target", "other")]
    mention_rows = [{"method": r["method"], "group": r["group"], "before": r["before"], "after": r["after"]}
                    for r in rows if r["measure"] == "mention" and r["group"] in ("target", "other")]
    return out, plot_rows, mention_rows, {"eval_id": eval_id, "ablation": evals[0]["ablation"], "summary": rows,
                                           "being_written": writer is not None, "budgets": budgets,
                                           "gaps": evidence.gaps.to_pylist()}


def being_written(run: RunReader) -> int | None:
    """The pid of a process writing the run's warehouse now (its writer lock is held), else None."""
    from kneuron.warehouse.layout import LOCK_FILE
    from kneuron.warehouse.lock import writer_pid

    root = getattr(run, "root", None)
    return writer_pid(Path(root), Path(root) / LOCK_FILE) if root else None


def answer_section(run: RunReader, method: str, sets: dict[tuple[str, str], StoredSet],
                   evaluation: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The headline the report leads with: model, run, concepts, and the comparison the latest evaluation
    supports (`kneuron.engine.eval.headline.answer`): each method's T - O (the budget section's T and O; its specificity
    area for a budget evaluation) with its 95% interval and n, against the random control, paired on the same
    images; a method is named only when it exceeds every other at 95%. Returns (section, its summary-json
    entry)."""
    from kneuron.engine.eval.headline import answer

    out = section("answer")
    row = run.row
    concepts = sorted({c for (c, m), s in sets.items() if m == method})
    sizes = [len(s.neurons) for (c, m), s in sets.items() if m == method]
    units = (row.get("n_layers") or 0) * (row.get("d_ff") or 0)
    facts = [("model", f"{row.get('model_name')} ({row.get('n_layers')} layers × {row.get('d_ff')} FFN units"
                       f" = {units} neurons)"),
             ("run", f"{run.run_id} ({fmt(row.get('created_at'))}), neurons read at the {row.get('positions')} "
                     f"positions"),
             ("concepts", f"{len(concepts)}: {', '.join(concepts)}" if concepts else "none selected yet")]
    if sizes:
        facts.append((f"{method} sets",
                      f"{min(sizes)}–{max(sizes)} neurons per concept (mean {number(sum(sizes) / len(sizes))})"))
    info: dict[str, Any] = {"question": "which method removes the concept most specifically"}
    if not evaluation.get("gaps"):
        out.blocks.append(Headline("Which method removes the concept most specifically? Not answered yet: this run "
                                   "has no suppression evaluation (run `kneuron suppress`).", facts))
        return out, {**info, "answer": None}
    found = answer(evaluation["gaps"], evaluation.get("budgets") or ())
    facts += found.facts
    facts.append(("evaluation", f"{evaluation.get('eval_id')} ({evaluation.get('ablation')} ablation; the latest of "
                                "this run)"))
    out.blocks.append(Headline(found.sentence, facts))
    areas = [r for r in evaluation["gaps"] if r["quantity"] == "area" and r["baseline"] is None]
    info.update({"answer": found.best, "sentence": found.sentence, "differs_from_random": found.differs_from_control,
                 "specificity": [{"method": r["method"], "estimate": r["estimate"], "images_low": r["images_low"],
                                  "images_high": r["images_high"], "concepts_low": r["concepts_low"],
                                  "concepts_high": r["concepts_high"], "n_target_images": r["n_target_images"],
                                  "n_concepts": r["n_concepts"]} for r in areas]})
    return out, info


def plots_section(out_dir: Path, method: str, layers: Any, overlap: Any, suppression: list[dict[str, Any]],
                  mentions: list[dict[str, Any]], n_layers: int | None) -> Section:
    from kneuron.engine.reporting.plots import layer_distribution_plot, overlap_matrix_plot, suppression_plot

    out = section("plots")
    folder = out_dir / "figures"
    out.blocks.append(Figure(layer_distribution_plot(layers, folder / "layers.png", n_layers=n_layers,
                                                     title=f"Layer distribution ({method} sets)"),
                             f"Layers of each concept's {method} neurons."))
    out.blocks.append(Figure(overlap_matrix_plot(overlap, folder / "overlap.png",
                                                 title=f"Overlap of the concepts' {method} sets (Jaccard)"),
                             "Jaccard overlap between the concepts' neuron sets."))
    if suppression:
        out.blocks.append(Figure(suppression_plot(suppression, folder / "suppression.png", mention_rates=mentions,
                                                  title="Suppression per method: drops vs the unmodified captions"),
                                 "Drop of each score (vs the unmodified model's captions) and of the concept's "
                                 "mention rate, on target images (the set's concept) and other images, per method, "
                                 "averaged over concepts: a specific set has a tall target bar and a short other "
                                 "bar. Each panel's axis is fitted to its values."))
    else:
        out.blocks.append(Text("Suppression plot: not run."))
    return out


# ---------------------------------------------------------------------------------------------- entry point
def build_report(warehouse_root: str | Path | None, out_dir: str | Path, config: ReportConfig | None = None
                 ) -> Report:
    """Write ``report.html``, ``report.md``, ``summary.json`` and ``figures/*.png`` into ``out_dir``
    (``config``: `ReportConfig`, default ``ReportConfig()``)."""
    config = config if config is not None else ReportConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KneuronError(f"report output path is a file: {out_dir}")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    with RunReader(warehouse_root, config.run_id) as run:
        sets, given = shown_sets(run, config)
        summary: dict[str, Any] = {"run_id": run.run_id, "method": config.method,
                                   "sets": [{"concept": c, "method": m, "set_id": s.set_id,
                                             "given": s.set_id in given} for (c, m), s in sets.items()]}
        sections: list[Section] = []
        selection, layers = selection_section(run, config.method, sets, given)
        sections.append(selection)
        try:
            dataset, dataset_error = run.dataset(config.data_root, config.split), None
        except KneuronError as exc:
            dataset, dataset_error = None, str(exc)
        suppression, plot_rows, mention_rows, evaluation = suppression_section(run, dataset)
        answer, summary["answer"] = answer_section(run, config.method, sets, evaluation)
        sections = [answer, *sections, suppression]
        budget, budget_summary = budget_section(run, dataset, out_dir)
        sections.append(budget)
        if budget_summary:
            summary["budget"] = budget_summary
        overlap = run.query("report_overlap", set_ids=set_ids_of(sets, config.method))
        sections.append(plots_section(out_dir, config.method, layers, overlap, plot_rows, mention_rows,
                                      run.row.get("n_layers")))
        heat, contrast, decoding = section("heatmaps"), section("contrast"), section("decoding")
        model_sections(run, config, sets, out_dir, summary, dataset, dataset_error, heat, contrast, decoding)
        sections += [heat, contrast, decoding, configuration_section(run)]
        summary["suppression"] = evaluation
    subtitle = f"Run {run.run_id} — model {run.row.get('model_name')} — neuron sets: {config.method}"
    html_path = out_dir / "report.html"
    md_path = out_dir / "report.md"
    html_path.write_text(render_html(config.title, subtitle, sections), encoding="utf-8")
    md_path.write_text(render_markdown(config.title, subtitle, sections, out_dir), encoding="utf-8")
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(json_ready(summary), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Report(out_dir, html_path, md_path, summary_path, figures(sections), summary)
