"""The report of one warehouse run: one self-contained HTML page and a Markdown file with its PNGs beside it.

    result = build_report("kneuron-warehouse", "report", ReportConfig())
    result.html, result.markdown, result.summary  # paths and the headline numbers (also in summary.json)

Sections (HTML ids): ``configuration`` (the runs row and its config), ``selection`` (set sizes per concept and
method, layer distribution), ``suppression`` (mean scores of the latest evaluation per method, or "not run"),
``plots`` (layer distribution, concept overlap, suppression), ``heatmaps`` (original | inpainted with the
concept's neuron set, a few evaluation images per concept), ``contrast`` (share of images whose heatmap is
brighter on the concept's object than elsewhere, per concept and method), ``decoding`` (top tokens of each
concept's strongest neurons, concept-word hit rates).

Data come from the warehouse through the bundled queries (``queries/report_*.sql`` and the selection queries);
heatmaps and decoding need the run's model (loaded from the name or folder the run recorded, or
``ReportConfig.model``) and, for heatmaps, the run's dataset and inpainter (both from ``runs.config_json``).
Without them those sections say why they are missing; the rest of the report is still written.

The HTML page has no external resource: inline CSS, every image a base64 ``data:`` URI, no script.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import KneuronError

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
    (contrast and hit rates cover every method of the run). model / device: override the run's model / where it
    runs; with_model=False skips heatmaps, contrast and decoding. data_root / split: override the run's dataset.
    heatmap_images: images per concept drawn; contrast_images: images per concept in the contrast share;
    decode_top: neurons decoded per concept; k: tokens per neuron; max_concepts: concepts with heatmaps and
    decoded tokens (None: all). n_probes: Q-Former Jacobian probes; heat_value: ``magnitude`` | ``signed``
    (see `engine.heatmap`); seed: the random control set of the contrast table (when the run has no random
    baseline set).
    """

    run_id: str | None = None
    method: str = "two_stage"
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
    seed: int = 0
    title: str = "kneuron report"


# ---------------------------------------------------------------------------------------------- document model
@dataclass
class Text:
    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Code:
    summary: str
    text: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)


@dataclass
class ReportResult:
    """Where the report is and its headline numbers (``summary``, also written to ``summary.json``)."""

    out_dir: Path
    html: Path
    markdown: Path
    summary_json: Path
    figures: list[Path]
    summary: dict[str, Any]


def fmt(value: Any) -> str:
    """A cell value as text: floats with 4 significant digits, NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


# ---------------------------------------------------------------------------------------------- run context
class RunContext:
    """One run of a warehouse: its runs row and config, and what the report and CLIs load from it."""

    def __init__(self, root: str | Path | None, run_id: str | None = None) -> None:
        import queries
        import warehouse

        self.con = warehouse.connect(root, read_only=True)
        self.root = root
        if run_id is None:
            latest = queries.run(self.con, "latest_run").to_pylist()
            if not latest:
                raise KneuronError(f"warehouse {root or warehouse.default_warehouse_path()} has no runs; "
                                   "run `kneuron ingest` first")
            run_id = latest[0]["run_id"]
        rows = queries.run(self.con, "report_run", {"run_id": run_id}).to_pylist()
        if not rows:
            known = [r[0] for r in self.con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
            raise KneuronError(f"unknown run {run_id!r}; runs in the warehouse: {', '.join(known) or 'none'}")
        self.run_id: str = run_id
        self.run: dict[str, Any] = rows[0]
        try:
            self.config: dict[str, Any] = json.loads(self.run.get("config_json") or "{}")
        except ValueError:
            self.config = {}
        self.notes: list[str] = []

    def query(self, name: str, **params: Any) -> Any:
        import queries

        return queries.run(self.con, name, {"run_id": self.run_id, **params})

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------------ model, data, inpainting
    @property
    def model_name(self) -> str:
        return str(self.config.get("config", {}).get("model") or self.run["model_name"])

    def load_model(self, model: str | None = None, device: str = "cpu") -> Any:
        """The run's model (or ``model``); a note is kept when its fingerprint differs from the run's."""
        from engine.models import load_model

        adapter = load_model(model or self.model_name, device=device,
                             dtype=self.run.get("dtype") if model is None and device != "cpu" else None)
        try:
            from engine.ingest import model_fingerprint

            if model_fingerprint(adapter) != self.run.get("model_hash"):
                self.notes.append(f"the loaded model {model or self.model_name!r} is not the one that recorded the "
                                  f"run (fingerprint differs from {self.run.get('model_hash')})")
        except ImportError:
            pass
        return adapter

    def dataset(self, data_root: str | None = None, split: str | None = None) -> Any:
        """The run's COCO split (``identity.dataset`` / ``identity.split`` of its config), or the override."""
        from engine.data.coco import CocoDataset

        identity = self.config.get("identity", {})
        root = data_root or identity.get("dataset") or self.config.get("config", {}).get("coco_root")
        split = split or identity.get("split") or self.config.get("config", {}).get("split")
        if not root or not split:
            raise KneuronError(f"run {self.run_id} does not record its dataset; give --data-root and --split")
        return CocoDataset(root, split)

    def inpainter(self, device: str = "cpu") -> tuple[Any, float]:
        """The run's inpainter and dilation margin (px), rebuilt from its config."""
        from engine.inpaint import get_inpainter

        config = self.config.get("config", {})
        name = config.get("inpainter", "telea")
        margin = float(config.get("margin_px", 0.0))
        if name in ("telea", "ns"):
            return get_inpainter(name, radius=config.get("inpaint_radius", 5.0)), margin
        return get_inpainter(name, model=config.get("sd_model"), seed=config.get("sd_seed", 0),
                             steps=config.get("sd_steps", 25), device=device), margin

    @staticmethod
    def pair(dataset: Any, concept: str, image_id: int, inpainter: Any, margin: float) -> tuple[Any, Any]:
        """(original, inpainted) PIL images, made the way ingest makes them."""
        import numpy as np
        from PIL import Image

        from engine.inpaint import removal_mask

        original = dataset.load_image(image_id)
        mask = removal_mask([dataset.concept_mask(image_id, concept)], (original.height, original.width), margin)
        return original, Image.fromarray(inpainter.inpaint(np.asarray(original), mask))

    # ------------------------------------------------------------------ neuron sets
    def neuron_sets(self, method: str | None = None) -> dict[tuple[str, str], list[tuple[int, int, float | None]]]:
        """(concept, method) -> [(layer, unit, score)] of the current sets, strongest first."""
        out: dict[tuple[str, str], list[tuple[int, int, float | None]]] = {}
        for row in self.query("report_neurons", method=method).to_pylist():
            out.setdefault((row["concept"], row["method"]), []).append((row["layer"], row["unit"], row["score"]))
        return out

    def set_members(self, set_id: str) -> tuple[str, str, list[tuple[int, int, float | None]]]:
        """(concept, method, members) of the set ``set_id`` of this run."""
        rows = self.query("report_set", set_id=set_id).to_pylist()
        if not rows:
            raise KneuronError(f"no neuron set {set_id!r} in run {self.run_id}")
        return rows[0]["concept"], rows[0]["method"], [(r["layer"], r["unit"], r["score"]) for r in rows]

    def chosen_set(self, concept: str | None, method: str, set_id: str | None
                   ) -> tuple[str | None, list[tuple[int, int, float | None]], str]:
        """(concept, members, description) of the set ``set_id``, else of ``concept``'s current ``method`` set.

        The concept is the set's own unless ``concept`` names another one.
        """
        if set_id:
            set_concept, set_method, members = self.set_members(set_id)
            return concept or set_concept, members, f"set {set_id} ({set_concept}, {set_method}, {len(members)} neurons)"
        members = self.neuron_sets(method).get((concept, method)) if concept else None
        if not members:
            raise KneuronError(f"no {method} neuron set for concept {concept!r} in run {self.run_id}")
        return concept, members, f"{concept} ({method}, {len(members)} neurons)"

    def images(self) -> dict[str, list[int]]:
        """concept -> its evaluation image ids (identification images only for a concept without any)."""
        by_split: dict[str, dict[str, list[int]]] = {}
        for row in self.query("report_images").to_pylist():
            by_split.setdefault(row["concept"], {}).setdefault(row["split"], []).append(int(row["image_id"]))
        return {concept: splits.get("eval") or splits.get("ident", []) for concept, splits in by_split.items()}


# ---------------------------------------------------------------------------------------------- sections
def configuration_section(ctx: RunContext) -> Section:
    rows = [[name, fmt(ctx.run.get(name))] for name in RUN_FIELDS if name in ctx.run]
    blocks: list[Any] = [Table(["field", "value"], rows)]
    if ctx.config:
        blocks.append(Code("config_json", json.dumps(ctx.config, indent=2, sort_keys=True, default=str)))
    return Section("configuration", dict(SECTIONS)["configuration"], blocks)


def selection_section(ctx: RunContext, method: str) -> tuple[Section, Any]:
    sizes = ctx.query("set_sizes", method=None).to_pylist()
    layers = ctx.query("layer_distribution", method=method)
    section = Section("selection", dict(SECTIONS)["selection"])
    if not sizes:
        section.blocks.append(Text("No neuron sets in this run yet: run `kneuron select`."))
        return section, layers
    section.blocks.append(Text("Current neuron set per concept and method: identification images used, stage-1 "
                               "candidates |C_k|, selected neurons (the set's size) and the thresholds applied."))
    section.blocks.append(Table(
        ["concept", "method", "images", "|C_k|", "selected", "threshold_a", "threshold_g"],
        [[r["concept"], r["method"], fmt(r["n_images"]), fmt(r["n_candidates"]), fmt(r["n_selected"]),
          fmt(r["threshold_a"]), fmt(r["threshold_g"])] for r in sizes]))
    per_concept: dict[str, list[str]] = {}
    for r in layers.to_pylist():
        per_concept.setdefault(r["concept"], []).append(f"{r['layer']}:{r['n_neurons']}")
    if per_concept:
        section.blocks.append(Table(["concept", f"layers of the {method} set (layer:count)"],
                                    [[c, " ".join(v)] for c, v in per_concept.items()]))
    return section, layers


def suppression_section(ctx: RunContext, dataset: Any) -> tuple[Section, list[dict[str, Any]],
                                                                list[dict[str, Any]], dict[str, Any]]:
    """The latest evaluation of the run with suppressed captions, summarised by `engine.eval.summary` exactly
    as `kneuron suppress` does. Returns (section, plot rows, mention rows, summary entry)."""
    import queries
    from engine.eval.metrics import METRICS
    from engine.eval.summary import ALL_CONCEPTS, METRIC_LABELS, paper_tables, summarize
    from engine.evaluate import outcomes_from_rows, stored_sets

    section = Section("suppression", dict(SECTIONS)["suppression"])
    evals = [e for e in ctx.query("report_evals").to_pylist() if e["n_suppressed"]]
    if not evals:
        section.blocks.append(Text("Suppression evaluation: not run (no suppressed captions for this run; run "
                                   "`kneuron suppress`)."))
        return section, [], [], {}
    eval_id = evals[0]["eval_id"]
    captions = queries.run(ctx.con, "suppress_eval_captions", {"eval_id": eval_id}).to_pylist()
    scores = queries.run(ctx.con, "suppress_eval_scores", {"eval_id": eval_id}).to_pylist()
    concepts_in = dataset.concepts_in if dataset is not None else (lambda image_id: ())
    outcomes = outcomes_from_rows(captions, scores, concepts_in, stored_sets(ctx.con, ctx.run_id))
    present = {row["metric"] for row in scores}
    metrics = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    summary = summarize(outcomes, metrics=metrics)
    methods = list(dict.fromkeys(o.method for o in outcomes))
    section.blocks.append(Text(
        f"Evaluation {eval_id} ({evals[0]['n_concepts']} concepts, {evals[0]['n_methods']} methods; "
        f"{len(evals)} evaluation(s) of this run, the latest is shown): captions with each method's neuron set "
        "suppressed, scored against the unmodified model's captions and the ground truth, on images of the "
        "set's concept (target: a low score and a large mention drop mean strong suppression) and on other "
        "images (other: a high score and retention mean the rest is kept). Averages over concepts."))
    if dataset is None:
        section.blocks.append(Text("Note: the run's dataset is not available, so other-object retention is not "
                                   "computed."))
    for title, table in paper_tables(summary, metrics=metrics, methods=methods).items():
        section.blocks.append(Table(table.column_names, [list(r.values()) for r in table.to_pylist()],
                                    caption=title))
    rows = [r for r in summary.to_pylist() if r["concept"] == ALL_CONCEPTS]
    plot_rows = [{"method": r["method"], "group": r["group"], "metric": METRIC_LABELS.get(r["measure"], r["measure"]),
                  "value": r["after"]} for r in rows
                 if r["measure"] in metrics and r["reference"] == "unmodified" and r["group"] in ("target", "other")]
    mention_rows = [{"method": r["method"], "group": r["group"], "before": r["before"], "after": r["after"]}
                    for r in rows if r["measure"] == "mention" and r["group"] in ("target", "other")]
    entry = {"eval_id": eval_id, "summary": [r for r in rows]}
    return section, plot_rows, mention_rows, entry


def plots_section(out_dir: Path, method: str, layers: Any, overlap: Any, suppression: list[dict[str, Any]],
                  mentions: list[dict[str, Any]], n_layers: int | None) -> Section:
    from engine.plots import layer_distribution_plot, overlap_matrix_plot, suppression_plot

    section = Section("plots", dict(SECTIONS)["plots"])
    figures = out_dir / "figures"
    section.blocks.append(Figure(layer_distribution_plot(layers, figures / "layers.png", n_layers=n_layers,
                                                         title=f"Layer distribution ({method} sets)"),
                                 f"Layers of each concept's {method} neurons."))
    section.blocks.append(Figure(overlap_matrix_plot(overlap, figures / "overlap.png",
                                                     title=f"Overlap of the concepts' {method} sets (Jaccard)"),
                                 "Jaccard overlap between the concepts' neuron sets."))
    if suppression:
        section.blocks.append(Figure(suppression_plot(suppression, figures / "suppression.png", mention_rates=mentions,
                                                      title="Suppression per method (scores vs the unmodified "
                                                            "captions)"),
                                     "Mean scores after suppression on target and other images per method (averaged "
                                     "over concepts); mention-rate drops of the set's concept."))
    else:
        section.blocks.append(Text("Suppression plot: not run."))
    return section


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def model_sections(ctx: RunContext, config: ReportConfig, out_dir: Path, summary: dict[str, Any],
                   dataset: Any, dataset_error: str | None) -> list[Section]:
    """Heatmaps, contrast and decoding (they need the model; heatmaps and contrast also the dataset)."""
    heat = Section("heatmaps", dict(SECTIONS)["heatmaps"])
    contrast = Section("contrast", dict(SECTIONS)["contrast"])
    decoding = Section("decoding", dict(SECTIONS)["decoding"])
    sections = [heat, contrast, decoding]
    if not config.with_model:
        for section in sections:
            section.blocks.append(Text("Skipped: the report was written without the model (--no-model)."))
        return sections
    sets = ctx.neuron_sets()
    concepts = sorted({c for (c, m), members in sets.items() if m == config.method and members})
    if config.max_concepts is not None:
        concepts = concepts[:config.max_concepts]
    if not concepts:
        for section in sections:
            section.blocks.append(Text(f"No non-empty {config.method} neuron set in this run."))
        return sections
    try:
        adapter = ctx.load_model(config.model, device=config.device)
    except KneuronError as exc:
        for section in sections:
            section.blocks.append(Text(f"Skipped: the model could not be loaded ({exc})."))
        return sections
    for note in ctx.notes:
        heat.blocks.append(Text(f"Note: {note}."))
    decoding_blocks(adapter, sets, concepts, config, decoding, summary)
    try:
        if dataset is None:
            raise KneuronError(dataset_error or "no dataset")
        inpainter, margin = ctx.inpainter(config.device)
    except KneuronError as exc:
        for section in (heat, contrast):
            section.blocks.append(Text(f"Skipped: the run's dataset or inpainter is not available ({exc})."))
        return sections
    images = ctx.images()
    heatmap_blocks(ctx, adapter, dataset, inpainter, margin, sets, concepts, images, config, out_dir, heat)
    contrast_blocks(adapter, dataset, sets, concepts, images, config, contrast, summary)
    return sections


def heatmap_blocks(ctx: RunContext, adapter: Any, dataset: Any, inpainter: Any, margin: float, sets: dict,
                   concepts: list[str], images: dict[str, list[int]], config: ReportConfig, out_dir: Path,
                   section: Section) -> None:
    from engine.heatmap import heatmap_figure

    section.blocks.append(Text(
        f"Mean activation of each concept's {config.method} neurons at the image tokens, drawn on the image "
        "(token -> patch map, bilinear upsampling, jet colormap at alpha 0.5), for the original image and the "
        "image with the concept inpainted away, on one common scale. Evaluation images (not used for selection)."))
    for concept in concepts:
        neurons = [(layer, unit) for layer, unit, _ in sets[(concept, config.method)]]
        for image_id in images.get(concept, [])[:config.heatmap_images]:
            try:
                original, inpainted = ctx.pair(dataset, concept, image_id, inpainter, margin)
            except KneuronError as exc:
                section.blocks.append(Text(f"{concept}, image {image_id}: skipped ({exc})."))
                continue
            figure = heatmap_figure(adapter, original, inpainted, neurons, n_probes=config.n_probes,
                                    value=config.heat_value)
            path = out_dir / "figures" / f"heatmap-{_slug(concept)}-{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.save(path)
            section.blocks.append(Figure(path, f"{concept}: image {image_id}, {len(neurons)} neurons "
                                               f"({config.method}); left original, right inpainted"))


RANDOM_CONTROL = "random control"


def random_control(adapter: Any, concept: str, size: int, seed: int) -> list[tuple[int, int]]:
    """``size`` neurons drawn uniformly from the whole model, seeded by (seed, concept)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256(f"{seed}:{concept}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    flat = rng.choice(adapter.n_layers * adapter.d_ff, size=min(size, adapter.n_layers * adapter.d_ff), replace=False)
    return sorted((int(i) // adapter.d_ff, int(i) % adapter.d_ff) for i in flat)


def contrast_blocks(adapter: Any, dataset: Any, sets: dict, concepts: list[str], images: dict[str, list[int]],
                    config: ReportConfig, section: Section, summary: dict[str, Any]) -> None:
    from engine.heatmap import contrast_share, object_contrasts, share_vs_others

    methods = sorted({m for (c, m), members in sets.items() if c in concepts and members},
                     key=lambda m: (m != config.method, m))
    control = not any(m.startswith("random") for m in methods)
    if control:
        methods.append(RANDOM_CONTROL)
    section.blocks.append(Text(
        "Heatmap contrast (`heatmap_object_contrast`, heat = "
        f"{config.heat_value} of the activations, each heatmap normalised to [0, 1]) over up to "
        f"{config.contrast_images} evaluation images per concept. Each cell: share of images whose mean heat "
        "inside the concept's mask is higher than outside it / share of the images showing other objects whose "
        "mean heat on the concept's object is higher than on those objects. All sets of a concept are drawn on "
        "the same images; a random set of the same size gives the chance level"
        + (f" ('{RANDOM_CONTROL}': uniform over all neurons, seed {config.seed}, size of the {config.method} set)."
           if control else ".")))
    rows = []
    pooled: dict[str, list[Any]] = {m: [] for m in methods}
    shares: dict[str, dict[str, Any]] = {}
    for concept in concepts:
        ids = images.get(concept, [])[:config.contrast_images]
        named = {m: [(l, u) for l, u, _ in sets[(concept, m)]] for m in methods if sets.get((concept, m))}
        if control and sets.get((concept, config.method)):
            named[RANDOM_CONTROL] = random_control(adapter, concept, len(sets[(concept, config.method)]),
                                                   config.seed)
        if not ids or not named:
            continue
        result = object_contrasts(adapter, dataset, ids, concept, named, n_probes=config.n_probes,
                                  value=config.heat_value)
        cells: list[Any] = [concept, len(ids)]
        for method in methods:
            if method in result:
                share, per_image = result[method]
                pooled[method] += per_image
                others = share_vs_others(per_image)
                shares.setdefault(concept, {})[method] = {"vs_rest": share, "vs_other_objects": others}
                cells.append(f"{fmt(share)} / {fmt(others)}")
            else:
                cells.append("—")
        rows.append(cells)
    overall = {m: {"vs_rest": contrast_share(v), "vs_other_objects": share_vs_others(v), "images": len(v)}
               for m, v in pooled.items()}
    rows.append(["all concepts (pooled images)", sum(r[1] for r in rows)]
                + [f"{fmt(overall[m]['vs_rest'])} / {fmt(overall[m]['vs_other_objects'])}" for m in methods])
    section.blocks.append(Table(["concept", "images"] + methods, rows,
                                caption="share brighter inside than outside / than on the other objects"))
    summary["heatmap_contrast"] = {"per_concept": shares, "pooled": overall, "method": config.method,
                                   "value": config.heat_value}


def decoding_blocks(adapter: Any, sets: dict, concepts: list[str], config: ReportConfig, section: Section,
                    summary: dict[str, Any]) -> None:
    from engine.decode import concept_hit_rate, concept_words, decode_neurons

    methods = sorted({m for (c, m), members in sets.items() if c in concepts and members},
                     key=lambda m: (m != config.method, m))
    control = not any(m.startswith("random") for m in methods)
    section.blocks.append(Text(
        f"Each neuron's output weight W_down[:, i] projected through the unembedding W_U (top {config.k} tokens), "
        "without and with the final RMSNorm. Hit rate: share of a set's neurons whose top tokens contain the "
        "concept word (its plural or first sub-token counts)"
        + (f"; '{RANDOM_CONTROL}' is the same seeded random set as in the heatmap contrast (chance level)."
           if control else ".")))
    if control:
        methods.append(RANDOM_CONTROL)
    hit_rows = []
    hits: dict[str, dict[str, Any]] = {}
    totals: dict[str, list[float]] = {m: [0.0, 0.0, 0.0] for m in methods}  # plain hits, norm hits, neurons
    for concept in concepts:
        words = concept_words(adapter, concept)
        cells: list[Any] = [concept]
        for method in methods:
            if method == RANDOM_CONTROL:
                size = len(sets.get((concept, config.method), []))
                members = [(l, u, None) for l, u in random_control(adapter, concept, size, config.seed)]
            else:
                members = sets.get((concept, method))
            if not members:
                cells.append("—")
                continue
            pairs = [(layer, unit) for layer, unit, _ in members]
            plain = concept_hit_rate(decode_neurons(adapter, pairs, k=config.k), words)
            normed = concept_hit_rate(decode_neurons(adapter, pairs, k=config.k, final_norm=True), words)
            hits.setdefault(concept, {})[method] = {"plain": plain, "final_norm": normed}
            totals[method] = [totals[method][0] + plain * len(pairs), totals[method][1] + normed * len(pairs),
                              totals[method][2] + len(pairs)]
            cells.append(f"{fmt(plain)} / {fmt(normed)}")
        hit_rows.append(cells)
    pooled = {m: {"plain": t[0] / t[2], "final_norm": t[1] / t[2], "neurons": int(t[2])}
              for m, t in totals.items() if t[2]}
    hit_rows.append(["all concepts (pooled neurons)"] + [
        f"{fmt(pooled[m]['plain'])} / {fmt(pooled[m]['final_norm'])}" if m in pooled else "—" for m in methods])
    section.blocks.append(Table(["concept"] + [f"{m} (plain / norm)" for m in methods], hit_rows,
                                caption="concept-word hit rate per set"))
    for concept in concepts:
        members = sets[(concept, config.method)][:config.decode_top]
        pairs = [(layer, unit) for layer, unit, _ in members]
        strongest_first = {pair: index for index, pair in enumerate(pairs)}
        plain = sorted(decode_neurons(adapter, pairs, k=config.k), key=lambda d: strongest_first[(d.layer, d.unit)])
        normed = {(d.layer, d.unit): d for d in decode_neurons(adapter, pairs, k=config.k, final_norm=True)}
        scores = {(layer, unit): score for layer, unit, score in members}
        rows = [[f"{d.layer}:{d.unit}", fmt(scores[(d.layer, d.unit)]), " ".join(repr(t) for t in d.tokens),
                 " ".join(repr(t) for t in normed[(d.layer, d.unit)].tokens)] for d in plain]
        section.blocks.append(Table(["neuron", "score", "top tokens", "top tokens (final norm)"], rows,
                                    caption=f"{concept}: strongest {len(rows)} {config.method} neurons"))
    summary["decoding_hit_rate"] = {"per_concept": hits, "pooled": pooled}


# ---------------------------------------------------------------------------------------------- rendering
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
caption { caption-side: top; text-align: left; font-style: italic; padding: .2em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 90%; color: #555; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 85%; }
"""


def render_html(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1><p>{esc(subtitle)}</p>",
             "<nav>" + "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections) + "</nav>"]
    for section in sections:
        parts.append(f'<section id="{section.id}"><h2>{esc(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Text):
                parts.append(f"<p>{esc(block.text)}</p>")
            elif isinstance(block, Table):
                caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
                head = "".join(f"<th>{esc(c)}</th>" for c in block.columns)
                body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>"
                               for row in block.rows)
                parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                parts.append(f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{esc(block.caption)}</figcaption></figure>")
            elif isinstance(block, Code):
                parts.append(f"<details><summary>{esc(block.summary)}</summary><pre>{esc(block.text)}</pre></details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, sections: Sequence[Section], out_dir: Path) -> str:
    lines = [f"# {title}", "", subtitle, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
                lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                lines.append("|" + "---|" * len(block.columns))
                lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
                lines.append("")
            elif isinstance(block, Figure):
                lines += [f"![{block.caption}]({block.path.relative_to(out_dir).as_posix()})", ""]
            elif isinstance(block, Code):
                lines += [f"<details><summary>{block.summary}</summary>", "", "```json", block.text, "```", "",
                          "</details>", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- entry point
def build_report(warehouse_root: str | Path | None, out_dir: str | Path, config: ReportConfig = ReportConfig()
                 ) -> ReportResult:
    """Write ``report.html``, ``report.md``, ``summary.json`` and ``figures/*.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise KneuronError(f"report output path is a file: {out_dir}")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    ctx = RunContext(warehouse_root, config.run_id)
    try:
        summary: dict[str, Any] = {"run_id": ctx.run_id, "method": config.method}
        sections = [configuration_section(ctx)]
        selection, layers = selection_section(ctx, config.method)
        sections.append(selection)
        try:
            dataset, dataset_error = ctx.dataset(config.data_root, config.split), None
        except KneuronError as exc:
            dataset, dataset_error = None, str(exc)
        suppression, plot_rows, mention_rows, evaluation = suppression_section(ctx, dataset)
        sections.append(suppression)
        overlap = ctx.query("concept_overlap", method=config.method)
        sections.append(plots_section(out_dir, config.method, layers, overlap, plot_rows, mention_rows,
                                      ctx.run.get("n_layers")))
        sections += model_sections(ctx, config, out_dir, summary, dataset, dataset_error)
        summary["suppression"] = evaluation
    finally:
        ctx.close()
    subtitle = f"Run {ctx.run_id} — model {ctx.run.get('model_name')} — neuron sets: {config.method}"
    html_path = out_dir / "report.html"
    md_path = out_dir / "report.md"
    html_path.write_text(render_html(config.title, subtitle, sections), encoding="utf-8")
    md_path.write_text(render_markdown(config.title, subtitle, sections, out_dir), encoding="utf-8")
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(json_ready(summary), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    figures = [b.path for s in sections for b in s.blocks if isinstance(b, Figure)]
    return ReportResult(out_dir, html_path, md_path, summary_path, figures, summary)


def json_ready(value: Any) -> Any:
    """``value`` with NaN/inf floats as None, tuples as lists and other non-JSON leaves as text."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
