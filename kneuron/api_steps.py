"""The four steps of the method from Python, one shape each: ``step(wh, run=..., options...)`` -> a result object.

    run = kneuron.ingest(wh, concepts=["circle"], images_per_concept=4)     # IngestRun: .run_id, .samples()
    sel = kneuron.select(wh, run=run.run_id)                                # Selection: .current, .table
    ev = kneuron.suppress(wh, run=run.run_id, methods=["two_stage"])        # EvalResult: .eval_id, .tables()
    rep = kneuron.report(wh, out="kneuron-report", with_model=False)        # Report: .html, .summary

The `kneuron ingest|select|suppress|report` commands call these functions and print what they return. Notes
and progress go to `logging` (the pipeline modules' loggers), never to stdout.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from kneuron.api_warehouse import Location, Warehouse, location_of
from kneuron.engine.errors import KneuronError
from kneuron.engine.pipelines.report.result import Report

if TYPE_CHECKING:
    from kneuron.engine.pipelines.ingest.start import IngestSummary
    from kneuron.engine.pipelines.ray_cluster import RayOptions
    from kneuron.engine.pipelines.suppress.pipeline import EvalResult
    from kneuron.queries.selection import Selection as StoredSelection

Where = Warehouse | Location | None


def _logger(name: str) -> Any:
    """A ``log(message)`` callback for a pipeline that writes to the logger ``name`` at INFO."""
    return logging.getLogger(name).info


def _handle(wh: Where) -> Warehouse:
    return wh if isinstance(wh, Warehouse) else Warehouse(location_of(wh))


def _check_options(step: str, options: Iterable[str], known: set[str]) -> None:
    """`KneuronError` naming the ``options`` of ``step`` that are not among ``known`` (its config's fields)."""
    unknown = sorted(set(options) - known)
    if unknown:
        raise KneuronError(f"{step}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _ray_options(step: str, actor: str, engine: str, adapter: Any, *, address: str | None, workers: int,
                 gpus_per_worker: float | None, cpus_per_worker: float | None) -> RayOptions | None:
    """The `RayOptions` of ``engine='ray'``, None for ``'local'``. `KneuronError` for another engine, for an
    ``adapter`` with Ray (each Ray ``actor`` loads the model itself) and for Ray options without Ray."""
    if engine == "ray":
        from kneuron.engine.pipelines.ray_cluster import RayOptions

        if adapter is not None:
            raise KneuronError(f"{step}: adapter= needs engine='local' (each Ray {actor} loads the model)")
        return RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                          cpus_per_worker=cpus_per_worker)
    if engine != "local":
        raise KneuronError(f"{step}: engine must be 'local' or 'ray', got {engine!r}")
    if address is not None or workers != 1 or gpus_per_worker is not None or cpus_per_worker is not None:
        raise KneuronError("--ray-address, --workers, --gpus-per-worker and --cpus-per-worker need --engine ray")
    return None


# ---------------------------------------------------------------------------------------------------- ingest
@dataclass
class IngestRun:
    """What `ingest` did: the run id, the pipeline's summary (counts, notes) and the warehouse it wrote."""

    run_id: str
    summary: IngestSummary
    warehouse: Warehouse

    def samples(self) -> pa.Table:
        """Recorded (concept, image) pairs of this run per concept and status: concept, status, pairs."""
        return self.warehouse.table("SELECT concept, status, count(*) AS pairs FROM samples WHERE run_id = $run "
                                    "GROUP BY ALL ORDER BY concept, status", run=self.run_id)


def ingest(wh: Where = None, *, run: str | None = None, concepts: Iterable[str] = (), coco_root: str | None = None,
           engine: str = "local", ray_address: str | None = None, workers: int = 1,
           gpus_per_worker: float | None = None, cpus_per_worker: float | None = None, adapter: Any = None,
           **options: Any) -> IngestRun:
    """Record stage-1/stage-2 signals of (concept, image) pairs into ``wh`` (`kneuron ingest`).

    run: the run id (default: derived from the options, so a rerun resumes). concepts: category names (empty:
    every category with enough images). coco_root: a COCO-layout folder (default: the embedded world).
    options: any other field of `kneuron.engine.pipelines.ingest.config.IngestConfig` (``model``, ``split``,
    ``images_per_concept``, ``device``, ``batch_size``, ``inpainter``, ``progress``, ...). engine: ``local`` or
    ``ray`` (with ``ray_address``/``workers``/``gpus_per_worker``/``cpus_per_worker``). adapter: an already
    loaded model (local engine) instead of ``model``.
    """
    from kneuron.engine.pipelines.ingest.pipeline import IngestConfig, run_ingest

    handle = _handle(wh)
    known = {f.name for f in dataclasses.fields(IngestConfig)} - {"warehouse", "run_id", "concepts", "coco_root"}
    _check_options("ingest", options, known)
    config = IngestConfig(coco_root=coco_root, concepts=tuple(dict.fromkeys(concepts)), warehouse=handle.location,
                          run_id=run, **options)
    log = _logger("kneuron.engine.pipelines.ingest.pipeline")
    ray = _ray_options("ingest", "worker", engine, adapter, address=ray_address, workers=workers,
                       gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
    if ray is not None:
        from kneuron.engine.pipelines.ingest.ray import run_ingest_ray

        summary = run_ingest_ray(config, ray, log=log)
    else:
        summary = run_ingest(config, adapter=adapter, log=log)
    return IngestRun(summary.run_id, summary, handle)


# ---------------------------------------------------------------------------------------------------- select
def layer_counts(neuron_sets: pa.Table, set_id: str) -> str:
    """Compact layer distribution of one set: ``"layer:count"`` pairs by layer, e.g. ``"0:3 2:11"``."""
    import pyarrow.compute as pc

    rows = neuron_sets.filter(pc.equal(neuron_sets.column("set_id"), set_id))
    counts = rows.group_by("layer").aggregate([("unit", "count")]).sort_by("layer").to_pydict()
    return " ".join(f"{layer}:{n}" for layer, n in zip(counts["layer"], counts["unit_count"], strict=True))


def summary_table(selection: StoredSelection) -> pa.Table:
    """One row per concept: images, |C_k|, |N_k|, baseline sizes and the layer distribution of N_k; with a
    specificity filter also |C_k ∩ S_k| (``specific_C_k``) and |N_k ∩ S_k| (``two_stage_specific``)."""
    rows: dict[str, dict[str, Any]] = {}
    for row in selection.summary.to_pylist():
        entry = rows.setdefault(row["concept"], {"concept": row["concept"]})
        if row["method"] == "two_stage":
            entry.update(images=row["n_images"], C_k=row["n_candidates"], N_k=row["n_selected"],
                         layers_of_N_k=layer_counts(selection.neuron_sets, row["set_id"]))
        else:
            entry[row["method"]] = row["n_selected"]
            if row["method"] == "two_stage_specific":
                entry["specific_C_k"] = row.get("n_specific")
    columns = ["concept", "images", "C_k", "N_k", "specific_C_k", "two_stage_specific", "stage1_only", "stage2_only",
               "layers_of_N_k"]
    present = [c for c in columns if any(c in entry for entry in rows.values())]
    return pa.Table.from_pylist([{c: entry.get(c) for c in present} for entry in rows.values()])


@dataclass
class Selection:
    """What `select` did: the run, the set ids written now / already stored / now current, the per-concept
    table (``table``: images, C_k, N_k, baseline sizes, layers of N_k) and the pipeline's full selection
    (``selection.neuron_sets``: one row per neuron; ``selection.summary``: one row per concept and method)."""

    run_id: str
    written: list[str]
    present: list[str]
    current: list[str]
    table: pa.Table
    selection: StoredSelection

    def set_ids(self, method: str = "two_stage", *, non_empty: bool = True) -> list[str]:
        """The set ids of ``method``, one per concept (only sets with neurons unless ``non_empty=False``)."""
        return [row["set_id"] for row in self.selection.summary.to_pylist()
                if row["method"] == method and (row["n_selected"] or not non_empty)]


def select(wh: Where = None, *, run: str | None = None, concepts: Iterable[str] = (), stage1: str = "auto",
           stage2: str = "auto", aggregate: str = "mean", min_share: float = 0.5, reduce: str = "max",
           stage2_pool: str = "candidates", baselines: bool = True, specific: str | None = None,
           exclude_massive: float | None = None) -> Selection:
    """Two-stage selection over ``run`` (default: the latest run) of ``wh``, stored as current sets
    (`kneuron select`). stage1 / stage2: ``auto`` | ``abs:V`` | ``q:Q`` | ``top:N``; the other options are
    those of `kneuron select` (``specific``: ``stage1`` | ``ratio:R`` | ``ratio1:R``)."""
    from kneuron.engine.pipelines.select import select_sets
    from kneuron.queries.selection import SelectionConfig, SpecificSpec, ThresholdSpec

    handle = _handle(wh)
    config = SelectionConfig(
        run_id=run, concepts=tuple(dict.fromkeys(concepts)), stage1=ThresholdSpec.parse(stage1),
        stage2=ThresholdSpec.parse(stage2), aggregate=aggregate, min_share=min_share, reduce=reduce,
        stage2_pool=stage2_pool, baselines=baselines,
        specific=None if specific is None else SpecificSpec.parse(specific), exclude_massive=exclude_massive)
    result = select_sets(handle.location, config)
    return Selection(result.selection.run_id, result.written, result.present, result.current,
                     summary_table(result.selection), result.selection)


# -------------------------------------------------------------------------------------------------- suppress
def suppress(wh: Where = None, *, run: str | None = None, methods: Sequence[str] | None = None,
             budgets: Sequence[int] | str | None = None, concepts: Sequence[str] | None = None,
             sets: Sequence[str] | None = None, images_per_concept: int | None = None,
             config: str | os.PathLike[str] | Any = None, progress: bool = True, adapter: Any = None,
             engine: str = "local", ray_address: str | None = None, workers: int = 1,
             gpus_per_worker: float | None = None, cpus_per_worker: float | None = None,
             **options: Any) -> EvalResult:
    """Suppression evaluation of the run's current two-stage sets (or ``sets``) against baselines
    (`kneuron suppress`); the result has ``eval_id``, ``summary`` (every measure) and ``tables()``.

    methods: two_stage, stage1_only, stage2_only, random, ... (default: the config's). budgets: budget curves
    (a list, or text ``"1,2,4"``). images_per_concept: at most this many target images per concept. config: a
    TOML file or an `kneuron.engine.eval.config.EvalConfig`; ``options`` and the named arguments override it (any
    `EvalConfig` field: ``budget``, ``metrics``, ``device``, ``seed``, ``eval_id``, ``edited_model``,
    ``ablation``, ...). engine: ``local``, or ``ray`` (captions made by ``workers`` captioner actors on the Ray
    cluster at ``ray_address``, with ``gpus_per_worker``/``cpus_per_worker``; the same tables). adapter: an
    already loaded model (local engine) instead of the run's.
    """
    from kneuron.engine.eval.budget import parse_budgets
    from kneuron.engine.eval.config import EvalConfig, load_config
    from kneuron.engine.pipelines.suppress.pipeline import run_evaluation

    handle = _handle(wh)
    if config is None:
        base = EvalConfig()
    elif isinstance(config, EvalConfig):
        base = config
    else:
        base = load_config(os.fspath(config))
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    _check_options("suppress", options, known)
    if isinstance(budgets, str):
        budgets = parse_budgets(budgets)
    overrides: dict[str, Any] = {
        "run_id": run, "methods": None if methods is None else tuple(dict.fromkeys(methods)) or None,
        "concepts": None if concepts is None else tuple(dict.fromkeys(concepts)) or None,
        "sets": None if sets is None else tuple(dict.fromkeys(sets)) or None,
        "budgets": None if budgets is None else tuple(budgets), "max_images": images_per_concept, **options}
    merged = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    merged.validate()
    log = _logger("kneuron.engine.pipelines.suppress.pipeline")
    ray = _ray_options("suppress", "captioner", engine, adapter, address=ray_address, workers=workers,
                       gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
    if ray is not None:
        from kneuron.engine.pipelines.suppress.ray import run_evaluation_ray

        return run_evaluation_ray(merged, handle.location, ray, progress=progress, log=log)
    return run_evaluation(merged, handle.location, adapter=adapter, progress=progress, log=log)


# ---------------------------------------------------------------------------------------------------- report
def report(wh: Where = None, *, out: str | os.PathLike[str] = "kneuron-report", run: str | None = None,
           sets: Sequence[str] = (), **options: Any) -> Report:
    """Write the HTML + Markdown report of ``run`` (default: the latest) into the folder ``out``
    (`kneuron report`). options: any field of `kneuron.engine.pipelines.report.pipeline.ReportConfig` (``method``,
    ``model``,
    ``device``, ``with_model``, ``heatmap_images``, ``decode_top``, ...)."""
    from kneuron.engine.pipelines.report.pipeline import ReportConfig, build_report

    handle = _handle(wh)
    known = {f.name for f in dataclasses.fields(ReportConfig)} - {"run_id", "set_ids"}
    _check_options("report", options, known)
    config = ReportConfig(run_id=run, set_ids=tuple(sets), **options)
    return build_report(handle.location, Path(out), config)
