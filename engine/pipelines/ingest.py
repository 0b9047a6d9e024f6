"""The ingest pipeline: COCO (concept, image) pairs -> inpaint -> caption -> record -> warehouse batches.

For every concept (a COCO category) the images that contain it are split deterministically into
identification and evaluation sets (`split_ident_eval`, stored in the ``splits`` table). Every identification
image (up to ``images_per_concept``) becomes one pair: the original image and the image with the union of the
concept's instance masks, dilated by ``margin_px``, inpainted away. Per batch of pairs:

1. both images are captioned greedily (`caption_images`);
2. the target ``y^c`` is the logit of the concept's first sub-token where the model predicts it in its own
   teacher-forced caption of the original image; when the caption does not contain the concept word, the
   fixed answer prefix (``adapter.answer_prefix``) is teacher-forced and ``y^c`` is read right after it
   (``samples.target_source`` says which: ``caption`` | ``prefix``). A concept word the tokenizer splits into
   several sub-tokens is looked up as the whole sub-token sequence and ``y^c`` uses its first sub-token (noted
   once per concept; the split is stored under ``concept_tokens`` in ``runs.config_json``);
3. `record_pairs` runs originals and inpainted images through the model together and reduces on device;
4. the ``samples``, ``neuron_stats`` and ``token_stats`` rows of the batch are committed as one warehouse batch
   (the first batch of a run also carries its ``runs`` row and the ``splits`` of all its concepts).

The run id is a function of what determines the recorded values (model weights fingerprint, prompt, dtype,
dataset root and split, concepts, image selection, seed, positions, top-k, inpainter), so rerunning the same
command resumes the same run: pairs with a committed ``samples`` row are skipped, the stored splits are reused.
Pairs are grouped into batches per concept in a fixed order, so a resumed run forms the same batches as an
uninterrupted one and ends with the same rows. A pair whose image is missing or unreadable or whose mask is
empty gets a ``samples`` row with ``status = 'skipped'`` and the reason; problems with the whole run (unknown
concept, a model that does not load, another writer) raise `KneuronError` before anything is written.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import warehouse
from engine.caption import caption_images
from engine.data.coco import CocoDataset
from engine.errors import KneuronError
from engine.inpaint import Inpainter
from engine.memory import choose_batch_size
from engine.models import load_model, resolve_device
from engine.models.base import VLMAdapter
from engine.pipelines.ingest_config import IngestConfig
from engine.pipelines.ingest_identity import (
    check_existing_run,
    check_images_unchanged,
    count_positions,
    image_digests,
    make_run_id,
    run_identity,
    runs_row,
)
from engine.pipelines.ingest_plan import (
    PairInput,
    build_inpainter,
    concept_token_ids,
    open_dataset,
    plan_splits,
    prepare_pair,
    resolve_concepts,
    stored_splits,
)
from engine.pipelines.ingest_rows import (
    SampleRow,
    neuron_stats_table,
    samples_columns,
    splits_columns,
    token_stats_table,
)
from engine.progress import Progress
from engine.record import PairRecord, RecordConfig, choose_target, record_pairs

Log = Callable[[str], None]

__all__ = ["IngestConfig", "IngestSummary", "run_ingest"]


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


# ---------------------------------------------------------------------------------------------- the batches
@dataclass
class ChunkInputs:
    """What recording a chunk of pairs needs, fixed for the whole run."""

    config: IngestConfig
    dataset: CocoDataset
    adapter: VLMAdapter
    inpainter: Inpainter
    concept_ids: dict[str, list[int]]
    prefix_ids: list[int]
    run_id: str


def record_chunk(inputs: ChunkInputs, concept: str, image_ids: Sequence[int]
                 ) -> tuple[list[SampleRow], list[int], PairRecord | None]:
    """Samples rows of a chunk of one concept's images, the ids recorded and their `PairRecord` (or None)."""
    rows: list[SampleRow] = []
    pairs: list[PairInput] = []
    for image_id in image_ids:
        prepared = prepare_pair(inputs.dataset, concept, image_id, inputs.inpainter, inputs.config.margin_px)
        if isinstance(prepared, SampleRow):
            rows.append(prepared)
        else:
            pairs.append(prepared)
    if not pairs:
        return rows, [], None
    if inputs.config.save_inpainted:
        folder = Path(inputs.config.save_inpainted) / quote(concept, safe=" ")
        folder.mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            pair.inpainted.save(folder / f"{pair.image_id:012d}.png")
    b = len(pairs)
    captions = caption_images(inputs.adapter, [p.original for p in pairs] + [p.inpainted for p in pairs],
                              batch_size=2 * b)
    targets = [choose_target(captions.token_ids[k], inputs.concept_ids[concept], inputs.prefix_ids) for k in range(b)]
    record = record_pairs(inputs.adapter, [p.original for p in pairs], [p.inpainted for p in pairs], targets,
                          RecordConfig(positions=inputs.config.positions, top_k=inputs.config.top_k))
    for k, (pair, target) in enumerate(zip(pairs, targets)):
        rows.append(SampleRow(
            concept, pair.image_id, pair.file_name, mask_area=pair.mask_area, mask_fraction=pair.mask_fraction,
            caption_original=captions.texts[k], caption_inpainted=captions.texts[b + k],
            target_token_id=target.token_id, target_source=target.source,
            target_position=int(record.target_position[k]),
        ))
    return rows, [p.image_id for p in pairs], record


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


def run_ingest(config: IngestConfig, adapter: VLMAdapter | None = None, log: Log | None = None) -> IngestSummary:
    """Ingest ``config`` into its warehouse (resuming the run if it is already there); see the module docstring.

    ``adapter``: an already loaded model (then ``config.model``/``device``/``dtype`` are not used); otherwise the
    model is loaded once the writer lock is held (a second writer is refused before any loading).
    ``log``: where one-line notes and progress lines go (e.g. ``click.echo`` to stderr); notes are also in the
    summary.
    """
    config.validate()
    if config.run_id is not None and not warehouse.valid_run_id(config.run_id):
        raise KneuronError(f"bad --run-id {config.run_id!r}: use 1-128 of A-Z a-z 0-9 _ . - (starting alphanumeric)")
    started = time.perf_counter()
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if log:
            log(message)

    dataset = open_dataset(config, log=note)
    concepts, automatic = resolve_concepts(dataset, config)
    device = resolve_device(config.device) if adapter is None else str(adapter.device)
    with warehouse.Warehouse.open(config.warehouse, create=True) as wh:  # a second writer fails here, at once
        if adapter is None:
            adapter = load_model(config.model, device=device, dtype=None if config.dtype == "auto" else config.dtype,
                                 log=log if config.progress else None)
        inpainter = build_inpainter(config, device)
        token_notes: list[str] = []
        concepts, concept_ids = concept_token_ids(adapter, concepts, automatic, token_notes)
        for message in token_notes:
            note(message)
        identity = run_identity(adapter, dataset, concepts, config, inpainter)
        run_id = config.run_id or make_run_id(adapter.name, identity)
        resumed = run_id in wh.run_ids()
        pending_run: dict[str, Any] | None = None
        if resumed:
            check_existing_run(wh, run_id, identity)
            wh.check_run_files(run_id)
            splits = stored_splits(wh, run_id, concepts)
            check_images_unchanged(stored_image_digests(wh, run_id), dataset)
        else:
            splits = plan_splits(dataset, concepts, config)
            extra = {"device": device, "concept_tokens": concept_ids,
                     "dataset_split_sizes": {c: [len(i), len(e)] for c, (i, e) in splits.items()},
                     "image_digests": image_digests(dataset, [i for ident, _ in splits.values() for i in ident])}
            pending_run = runs_row(run_id, adapter, identity, config,
                                   count_positions(adapter, config.positions), extra)
        done, skipped_before = stored_samples(wh, run_id)
        if not config.retry_skipped:
            done |= set(skipped_before)
        batch_size, why = choose_batch_size(config.batch_size, adapter)
        if why:
            note(why)
        prefix = adapter.answer_prefix
        inputs = ChunkInputs(config, dataset, adapter, inpainter, concept_ids,
                             adapter.encode(prefix) if prefix else [], run_id)
        chunks = [(concept, ident[start:start + batch_size])
                  for concept, (ident, _) in splits.items()
                  for start in range(0, len(ident), batch_size)]
        total = sum(len(ids) for _, ids in chunks)
        summary = IngestSummary(run_id=run_id, warehouse=str(wh.root), concepts=list(concepts), pairs_total=total,
                                resumed=resumed, notes=notes)
        todo: list[tuple[str | None, list[int]]] = [
            (concept, [i for i in ids if (concept, i) not in done]) for concept, ids in chunks]
        todo = [(concept, ids) for concept, ids in todo if ids]
        summary.already_done = total - sum(len(ids) for _, ids in todo)
        summary.retried = sum(1 for concept, ids in todo for i in ids if (concept, i) in skipped_before)
        if summary.retried:
            note(f"retrying {summary.retried} pair(s) stored as skipped (--no-retry-skipped to leave them)")
        if pending_run is not None and not todo:
            todo = [(None, [])]  # a run without pairs still stores its runs and splits rows
        pending = sum(len(ids) for _, ids in todo)
        label = f"ingest {run_id}" + (f" ({summary.already_done} pair(s) already done)" if summary.already_done else "")
        progress = Progress(pending, label, log if (log and config.progress) else (lambda _: None))
        try:
            for concept, ids in todo:
                rows, recorded_ids, record = record_chunk(inputs, concept, ids) if concept else ([], [], None)
                # a pair skipped again for the reason already stored needs no new row
                rows = [row for row in rows if row.status == "ok"
                        or skipped_before.get((row.concept, row.image_id)) != row.skip_reason]
                with wh.batch() as batch:
                    if pending_run is not None:
                        batch.add("runs", pending_run)
                        batch.add("splits", splits_columns(run_id, splits))
                    if rows:
                        batch.add("samples", samples_columns(run_id, rows))
                    if record is not None and concept is not None:
                        batch.add("neuron_stats", neuron_stats_table(run_id, concept, recorded_ids, record))
                        batch.add("token_stats", token_stats_table(run_id, concept, recorded_ids, record))
                pending_run = None
                if batch.record is not None:
                    summary.batches += 1
                    summary.bytes_written += sum(entry.bytes for entry in batch.record.files)
                summary.recorded += len(recorded_ids)
                summary.skipped += len(ids) - len(recorded_ids)
                progress.advance(len(ids))
        finally:
            progress.close()
    summary.seconds = time.perf_counter() - started
    return summary


def stored_image_digests(wh: warehouse.Warehouse, run_id: str) -> dict[str, str]:
    """The identification images' digests stored with the run (empty for runs recorded before they were)."""
    rows = wh.read("runs", run_id=run_id).to_pylist()
    digests = json.loads(rows[0]["config_json"]).get("image_digests", {}) if rows else {}
    return {str(k): str(v) for k, v in digests.items()}
