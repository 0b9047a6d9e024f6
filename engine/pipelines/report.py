"""The report of one warehouse run: one self-contained HTML page and a Markdown file with its PNGs beside it.

    result = build_report("kneuron-warehouse", "report", ReportConfig())
    result.html, result.markdown, result.summary  # paths and the headline numbers (also in summary.json)

Sections (HTML ids): ``configuration`` (the runs row and its config), ``selection`` (set sizes per concept and
method, the set ids shown, layer distribution), ``suppression`` (mean scores of the latest evaluation per
method, or "not run"), ``plots`` (layer distribution, concept overlap, suppression), ``heatmaps`` (original |
inpainted with the concept's neuron set, a few evaluation images per concept), ``contrast`` (share of images
whose heatmap is brighter on the concept's object than elsewhere, per concept and method), ``decoding`` (top
tokens of each concept's strongest neurons, concept-word hit rates).

The sets shown are the run's current sets (`engine.pipelines.sets.current_set_ids`: the latest chosen by
``kneuron select``, else the latest stored), except the ``ReportConfig.method`` sets named by
``ReportConfig.set_ids``. The chance level of the contrast and hit-rate tables is the run's stored ``random``
baseline set of each concept (stored by ``kneuron suppress``); a run without one says so.

Data come from the warehouse through the bundled queries (``queries/report_*.sql``); heatmaps and decoding
need the run's model (loaded from the name or folder the run recorded, or ``ReportConfig.model``) and, for
heatmaps, the run's dataset and inpainter (both from ``runs.config_json``). Without them those sections say why
they are missing; the rest of the report is still written. Rendering is `engine.render` (no script, no
external resource).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.document import Code, Figure, Section, Table, Text, figures, fmt, json_ready
from engine.errors import KneuronError
from engine.pipelines.report_model import model_sections
from engine.pipelines.run import RunReader
from engine.pipelines.sets import StoredSet
from engine.render import render_html, render_markdown

SECTIONS: tuple[tuple[str, str], ...] = (
    ("configuration", "Run configuration"),
    ("selection", "Selection summary"),
    ("suppression", "Suppression"),
    ("plots", "Plots"),
    ("heatmaps", "Activation heatmaps"),
    ("contrast", "Heatmap contrast"),
    ("decoding", "Decoded tokens"),
)
RUN_FIELDS = ("run_id", "created_at", "model_name", "model_hash", "hook_site", "prompt", "positions", "n_positions",
              "n_layers", "d_ff", "dtype", "inpainter", "kneuron_version")


@dataclass
class ReportConfig:
    """What goes into the report.

    run_id: the run (None: the latest). method: the neuron-set method shown in heatmaps, plots and decoding
    (contrast and hit rates cover every method of the run). set_ids: ``method`` sets shown instead of their
    concepts' current sets (at most one per concept). model / device: override the run's model / where it
    runs; with_model=False skips heatmaps, contrast and decoding. data_root / split: override the run's
    dataset. heatmap_images: images per concept drawn; contrast_images: images per concept in the contrast
    share; decode_top: neurons decoded per concept; k: tokens per neuron; max_concepts: concepts with heatmaps
    and decoded tokens (None: all). n_probes: Q-Former Jacobian probes; heat_value: ``magnitude`` | ``signed``
    (see `engine.heatmap`).
    """

    run_id: str | None = None
    method: str = "two_stage"
    set_ids: tuple[str, ...] = ()
    model: str | None = None
    device: str = "cpu"
    with_model: bool = True
    data_root: str | None = None
    split: str | None = None
    heatmap_images: int = 2
    contrast_images: int = 16
    decode_top: int = 5
    k: int = 10
    max_concepts: int | None = None
    n_probes: int = 16
    heat_value: str = "magnitude"
    title: str = "kneuron report"


@dataclass
class ReportResult:
    """Where the report is and its headline numbers (``summary``, also written to ``summary.json``)."""

    out_dir: Path
    html: Path
    markdown: Path
    summary_json: Path
    figures: list[Path]
    summary: dict[str, Any]


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
    out = section("configuration")
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
    out.blocks.append(Text("Current neuron set per concept and method: identification images used, stage-1 "
                           "candidates |C_k|, selected neurons (the set's size) and the thresholds applied."))
    out.blocks.append(Table(
        ["concept", "method", "images", "|C_k|", "selected", "threshold_a", "threshold_g"],
        [[r["concept"], r["method"], fmt(r["n_images"]), fmt(r["n_candidates"]), fmt(r["n_selected"]),
          fmt(r["threshold_a"]), fmt(r["threshold_g"])] for r in sizes]))
    out.blocks.append(Table(
        ["concept", "method", "set_id", "neurons", "shown because"],
        [[concept, m, s.set_id, len(s.neurons), "--set" if s.set_id in given else "current"]
         for (concept, m), s in sets.items()],
        caption="neuron sets shown in this report (current: the latest chosen by `kneuron select`, else the "
                "latest stored; --set: named when the report was written)"))
    per_concept: dict[str, list[str]] = {}
    for r in layers.to_pylist():
        per_concept.setdefault(r["concept"], []).append(f"{r['layer']}:{r['n_neurons']}")
    if per_concept:
        out.blocks.append(Table(["concept", f"layers of the {method} set (layer:count)"],
                                [[c, " ".join(v)] for c, v in per_concept.items()]))
    return out, layers


def suppression_section(run: RunReader, dataset: Any) -> tuple[Section, list[dict[str, Any]],
                                                                list[dict[str, Any]], dict[str, Any]]:
    """The latest evaluation of the run with suppressed captions, summarised by `engine.eval.summary` exactly
    as `kneuron suppress` does. Returns (section, plot rows, mention rows, summary entry)."""
    import queries
    from engine.eval.metrics import METRICS
    from engine.eval.summary import ALL_CONCEPTS, METRIC_LABELS, outcomes_from_rows, paper_tables, summarize
    from engine.pipelines.sets import stored_sets

    out = section("suppression")
    evals = [e for e in run.query("report_evals").to_pylist() if e["n_suppressed"]]
    if not evals:
        out.blocks.append(Text("Suppression evaluation: not run (no suppressed captions for this run; run "
                               "`kneuron suppress`)."))
        return out, [], [], {}
    eval_id = evals[0]["eval_id"]
    captions = queries.run(run.con, "suppress_eval_captions", {"eval_id": eval_id}).to_pylist()
    scores = queries.run(run.con, "suppress_eval_scores", {"eval_id": eval_id}).to_pylist()
    concepts_in = dataset.concepts_in if dataset is not None else (lambda image_id: ())
    outcomes = outcomes_from_rows(captions, scores, concepts_in, stored_sets(run.con, run.run_id))
    present = {row["metric"] for row in scores}
    metrics = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    summary = summarize(outcomes, metrics=metrics)
    methods = list(dict.fromkeys(o.method for o in outcomes))
    out.blocks.append(Text(
        f"Evaluation {eval_id} ({evals[0]['n_concepts']} concepts, {evals[0]['n_methods']} methods; "
        f"{len(evals)} evaluation(s) of this run, the latest is shown): captions with each method's neuron set "
        "suppressed, scored against the unmodified model's captions and the ground truth, on images of the "
        "set's concept (target: a low score and a large mention drop mean strong suppression) and on other "
        "images (other: a high score and retention mean the rest is kept). Averages over concepts."))
    if dataset is None:
        out.blocks.append(Text("Note: the run's dataset is not available, so other-object retention is not "
                               "computed."))
    for title, table in paper_tables(summary, metrics=metrics, methods=methods).items():
        out.blocks.append(Table(table.column_names, [list(r.values()) for r in table.to_pylist()], caption=title))
    rows = [r for r in summary.to_pylist() if r["concept"] == ALL_CONCEPTS]
    plot_rows = [{"method": r["method"], "group": r["group"], "metric": METRIC_LABELS.get(r["measure"], r["measure"]),
                  "value": r["after"]} for r in rows
                 if r["measure"] in metrics and r["reference"] == "unmodified" and r["group"] in ("target", "other")]
    mention_rows = [{"method": r["method"], "group": r["group"], "before": r["before"], "after": r["after"]}
                    for r in rows if r["measure"] == "mention" and r["group"] in ("target", "other")]
    return out, plot_rows, mention_rows, {"eval_id": eval_id, "summary": rows}


def plots_section(out_dir: Path, method: str, layers: Any, overlap: Any, suppression: list[dict[str, Any]],
                  mentions: list[dict[str, Any]], n_layers: int | None) -> Section:
    from engine.plots import layer_distribution_plot, overlap_matrix_plot, suppression_plot

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
                                                  title="Suppression per method (scores vs the unmodified captions)"),
                                 "Mean scores after suppression on target and other images per method (averaged "
                                 "over concepts); mention-rate drops of the set's concept."))
    else:
        out.blocks.append(Text("Suppression plot: not run."))
    return out


# ---------------------------------------------------------------------------------------------- entry point
def build_report(warehouse_root: str | Path | None, out_dir: str | Path, config: ReportConfig = ReportConfig()
                 ) -> ReportResult:
    """Write ``report.html``, ``report.md``, ``summary.json`` and ``figures/*.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KneuronError(f"report output path is a file: {out_dir}")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    with RunReader(warehouse_root, config.run_id) as run:
        sets, given = shown_sets(run, config)
        summary: dict[str, Any] = {"run_id": run.run_id, "method": config.method,
                                   "sets": [{"concept": c, "method": m, "set_id": s.set_id,
                                             "given": s.set_id in given} for (c, m), s in sets.items()]}
        sections = [configuration_section(run)]
        selection, layers = selection_section(run, config.method, sets, given)
        sections.append(selection)
        try:
            dataset, dataset_error = run.dataset(config.data_root, config.split), None
        except KneuronError as exc:
            dataset, dataset_error = None, str(exc)
        suppression, plot_rows, mention_rows, evaluation = suppression_section(run, dataset)
        sections.append(suppression)
        overlap = run.query("report_overlap", set_ids=set_ids_of(sets, config.method))
        sections.append(plots_section(out_dir, config.method, layers, overlap, plot_rows, mention_rows,
                                      run.row.get("n_layers")))
        heat, contrast, decoding = section("heatmaps"), section("contrast"), section("decoding")
        model_sections(run, config, sets, out_dir, summary, dataset, dataset_error, heat, contrast, decoding)
        sections += [heat, contrast, decoding]
        summary["suppression"] = evaluation
    subtitle = f"Run {run.run_id} — model {run.row.get('model_name')} — neuron sets: {config.method}"
    html_path = out_dir / "report.html"
    md_path = out_dir / "report.md"
    html_path.write_text(render_html(config.title, subtitle, sections), encoding="utf-8")
    md_path.write_text(render_markdown(config.title, subtitle, sections, out_dir), encoding="utf-8")
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(json_ready(summary), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return ReportResult(out_dir, html_path, md_path, summary_path, figures(sections), summary)
