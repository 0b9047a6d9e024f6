"""The start of an ingest run, shared by both engines: the prologue before the warehouse is opened (`begin_run`:
the options checked, the notes, the dataset and its concepts, the clock), what the run needs from its model
(`ModelHead`, made where the model is loaded: in the driver for ``--engine local``, in a Ray worker for
``--engine ray``), and the plan of the run against the warehouse (`plan_run`: new run or resume, the splits, the
chunks still to record).

The plan is deterministic: chunks are ``batch_size`` identification images of one concept, in concept order and
ascending image ids, minus the pairs already committed. So any engine, uninterrupted or resumed, in any commit
order, ends with the same rows.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kneuron import warehouse
from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint import Inpainter
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.ingest.config import IngestConfig
from kneuron.engine.pipelines.ingest.identity import (
    check_existing_run,
    check_images_unchanged,
    count_positions,
    image_digests,
    make_run_id,
    run_identity,
    runs_row,
)
from kneuron.engine.pipelines.ingest.plan import (
    concept_token_ids,
    open_dataset,
    plan_splits,
    resolve_concepts,
    stored_splits,
)
from kneuron.engine.runtime.memory import choose_batch_size

Log = Callable[[str], None]


@dataclass
class IngestSummary:
    """What one `run_ingest` call did."""

    run_id: str
    warehouse: str
    concepts: list[str]
    pairs_total: int
    recorded: int = 0
    skipped: int = 0
    already_done: int = 0
    batches: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    resumed: bool = False
    retried: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One-line summary for the terminal."""
        resumed = f", {self.already_done} already done (resumed)" if self.already_done else ""
        return (f"run {self.run_id}: {len(self.concepts)} concept(s), {self.recorded} pair(s) recorded, "
                f"{self.skipped} skipped{resumed}; {self.bytes_written / 1e6:.2f} MB in {self.batches} batch(es), "
                f"{self.seconds:.1f} s; warehouse {self.warehouse}")


@dataclass
class ModelHead:
    """What the driver of a run needs from its model (plain values: it crosses process boundaries).

    concepts / concept_ids: the concepts the model's vocabulary knows and their sub-tokens; token_notes: what to
    tell the user about them; batch_note: how an automatic batch size was chosen; identity / run_id: see
    `run_identity`; name,
    n_layers, d_ff, n_positions: the model's shape for the ``runs`` row; prefix_ids: the answer prefix's tokens;
    batch_size: pairs per chunk; device: where the model ran.
    """

    concepts: list[str]
    concept_ids: dict[str, list[int]]
    token_notes: list[str]
    batch_note: str | None
    identity: dict[str, Any]
    run_id: str
    name: str
    n_layers: int
    d_ff: int
    n_positions: int
    prefix_ids: list[int]
    batch_size: int
    device: str


def check_config(config: IngestConfig) -> None:
    """The options of a run before anything is opened (`IngestConfig.validate` and the ``--run-id`` alphabet)."""
    config.validate()
    if config.run_id is not None and not warehouse.valid_run_id(config.run_id):
        raise KneuronError(f"bad --run-id {config.run_id!r}: use 1-128 of A-Z a-z 0-9 _ . - (starting alphanumeric)")


@dataclass
class RunStart:
    """The prologue of a run, before the warehouse is opened (`begin_run`).

    notes / note: the run's one-line notes and the function that records one (and passes it to ``log``);
    dataset: the COCO split read; concepts / automatic: the concepts to ingest and whether they were chosen
    automatically (`resolve_concepts`); started: `time.perf_counter` when the run started.
    """

    notes: list[str]
    note: Log
    dataset: CocoDataset
    concepts: list[str]
    automatic: bool
    started: float

    def finish(self, summary: IngestSummary) -> IngestSummary:
        """``summary`` with the notes and the wall time of the finished run filled in."""
        summary.notes = self.notes
        summary.seconds = time.perf_counter() - self.started
        return summary


def begin_run(config: IngestConfig, log: Log | None = None) -> RunStart:
    """Start a run of ``config``: check its options (`check_config`), then open its dataset (generating the
    embedded world when it is the default and missing) and resolve its concepts; notes go to ``log`` too."""
    check_config(config)
    started = time.perf_counter()
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if log:
            log(message)

    dataset = open_dataset(config, log=note)
    concepts, automatic = resolve_concepts(dataset, config)
    return RunStart(notes, note, dataset, concepts, automatic, started)


def model_head(adapter: VLMAdapter, dataset: CocoDataset, concepts: list[str], automatic: bool,
               config: IngestConfig, inpainter: Inpainter, device: str) -> ModelHead:
    """The `ModelHead` of a run with this loaded ``adapter`` (see `ModelHead`)."""
    notes: list[str] = []
    concepts, concept_ids = concept_token_ids(adapter, concepts, automatic, notes)
    identity = run_identity(adapter, dataset, concepts, config, inpainter)
    batch_size, why = choose_batch_size(config.batch_size, adapter)
    prefix = adapter.answer_prefix
    return ModelHead(
        concepts=list(concepts), concept_ids=concept_ids, token_notes=notes, batch_note=why, identity=identity,
        run_id=config.run_id or make_run_id(adapter.name, identity), name=adapter.name,
        n_layers=adapter.n_layers, d_ff=adapter.d_ff, n_positions=count_positions(adapter, config.positions),
        prefix_ids=list(adapter.encode(prefix)) if prefix else [], batch_size=batch_size, device=device)


@dataclass
class RunPlan:
    """A run against the warehouse: what is stored, what remains (``todo``: (concept, image ids) chunks; a
    run without pairs has one ``(None, [])`` chunk that stores its ``runs`` and ``splits`` rows)."""

    run_id: str
    resumed: bool
    splits: dict[str, tuple[list[int], list[int]]]
    pending_run: dict[str, list[Any]] | None
    skipped_before: dict[tuple[str, int], str]
    todo: list[tuple[str | None, list[int]]]
    summary: IngestSummary

    @property
    def pending_pairs(self) -> int:
        """Pairs still to record."""
        return sum(len(ids) for _, ids in self.todo)

    def label(self) -> str:
        """The progress line's label."""
        done = self.summary.already_done
        return f"ingest {self.run_id}" + (f" ({done} pair(s) already done)" if done else "")


def plan_run(wh: warehouse.Warehouse, head: ModelHead, dataset: CocoDataset, config: IngestConfig,
             note: Log) -> RunPlan:
    """Resume or start ``head.run_id`` in ``wh`` (the writer): check a stored run is the same run with its
    files and images intact, reuse or plan its splits, and list the chunks still to record."""
    run_id = head.run_id
    for message in head.token_notes:
        note(message)
    resumed = run_id in wh.run_ids()
    pending_run: dict[str, list[Any]] | None = None
    if resumed:
        check_existing_run(wh, run_id, head.identity)
        wh.check_run_files(run_id)
        splits = stored_splits(wh, run_id, head.concepts)
        check_images_unchanged(stored_image_digests(wh, run_id), dataset)
    else:
        splits = plan_splits(dataset, head.concepts, config)
        extra = {"device": head.device, "concept_tokens": head.concept_ids,
                 "dataset_split_sizes": {c: [len(i), len(e)] for c, (i, e) in splits.items()},
                 "image_digests": image_digests(dataset, [i for ident, _ in splits.values() for i in ident])}
        pending_run = runs_row(run_id, head, head.identity, config, head.n_positions, extra)
    done, skipped_before = stored_samples(wh, run_id)
    if not config.retry_skipped:
        done |= set(skipped_before)
    if head.batch_note:
        note(head.batch_note)
    size = head.batch_size
    chunks = [(concept, ident[start:start + size]) for concept, (ident, _) in splits.items()
              for start in range(0, len(ident), size)]
    total = sum(len(ids) for _, ids in chunks)
    summary = IngestSummary(run_id=run_id, warehouse=str(wh.root), concepts=list(head.concepts), pairs_total=total,
                            resumed=resumed)
    todo: list[tuple[str | None, list[int]]] = [
        (concept, [i for i in ids if (concept, i) not in done]) for concept, ids in chunks]
    todo = [(concept, ids) for concept, ids in todo if ids]
    summary.already_done = total - sum(len(ids) for _, ids in todo)
    summary.retried = sum(1 for concept, ids in todo for i in ids if (concept, i) in skipped_before)
    if summary.retried:
        note(f"retrying {summary.retried} pair(s) stored as skipped (--no-retry-skipped to leave them)")
    if pending_run is not None and not todo:
        todo = [(None, [])]  # a run without pairs still stores its runs and splits rows
    return RunPlan(run_id, resumed, splits, pending_run, skipped_before, todo, summary)


def stored_samples(wh: warehouse.Warehouse, run_id: str) -> tuple[set[tuple[str, int]], dict[tuple[str, int], str]]:
    """(pairs with an ``ok`` samples row, ``{pair: skip reason}`` of pairs whose latest row is ``skipped``)."""
    rows = wh.read("samples", run_id=run_id).select(["concept", "image_id", "status", "skip_reason"]).to_pylist()
    ok: set[tuple[str, int]] = set()
    skipped: dict[tuple[str, int], str] = {}
    for row in rows:  # commit order: a later row of a pair supersedes an earlier skipped one
        key = (row["concept"], int(row["image_id"]))
        if row["status"] == "ok":
            ok.add(key)
            skipped.pop(key, None)
        elif key not in ok:
            skipped[key] = row["skip_reason"] or ""
    return ok, skipped


def stored_image_digests(wh: warehouse.Warehouse, run_id: str) -> dict[str, str]:
    """The identification images' digests stored with the run (empty for runs recorded before they were)."""
    rows = wh.read("runs", run_id=run_id).to_pylist()
    digests = json.loads(rows[0]["config_json"]).get("image_digests", {}) if rows else {}
    return {str(k): str(v) for k, v in digests.items()}



@contextmanager
def new_folder_removed_on_failure(location: str | None) -> Iterator[None]:
    """Within the block, a warehouse folder that did not exist before it is removed again when the block fails
    before the warehouse's first commit (`kneuron.warehouse.fresh.remove_if_unused`): a failed first ingest leaves no
    empty warehouse behind. Remote warehouses (URIs) are left alone."""
    from kneuron.warehouse.fresh import remove_if_unused
    from kneuron.warehouse.store import default_warehouse_path, is_uri

    root = None
    if location is None or not is_uri(location):
        root = (Path(location).expanduser() if location else default_warehouse_path()).absolute()
    existed = root is None or root.exists()
    try:
        yield
    except BaseException:
        if not existed and root is not None:
            remove_if_unused(root)
        raise
