"""One chunk of an ingest run — a concept and a few of its identification images — from image files to the rows
of one warehouse batch. Both engines run exactly this code: the local loop (`kneuron.engine.pipelines.ingest.pipeline`)
calls
`chunk_result` and `commit_chunk` in turn; the Ray engine (`kneuron.engine.pipelines.ingest.ray`) runs `prepare_chunk`
in
CPU tasks, `record_prepared` + `chunk_tables` in recorder actors, and `commit_chunk` on the driver, the single
committer, in whatever order chunks finish.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.data.names import name_folder
from kneuron.engine.inpaint import Inpainter
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.ingest.config import IngestConfig
from kneuron.engine.pipelines.ingest.plan import PairInput, prepare_pair
from kneuron.engine.pipelines.ingest.rows import (
    SampleRow,
    neuron_rollup_table,
    neuron_stats_table,
    samples_columns,
    splits_columns,
    token_stats_table,
)
from kneuron.engine.signals.record import PairRecord, RecordConfig, choose_target, record_pairs

if TYPE_CHECKING:  # pragma: no cover
    from kneuron import warehouse
    from kneuron.engine.pipelines.ingest.start import RunPlan

#: tables a chunk's record adds, in the order they are added to its batch
RECORD_TABLES = ("neuron_stats", "token_stats", "neuron_rollup")


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


@dataclass
class ChunkResult:
    """What one chunk adds to the warehouse: its samples rows (ok and skipped) and, for the pairs recorded, the
    ``neuron_stats``, ``token_stats`` and ``neuron_rollup`` tables. ``index``: the chunk's place in the plan."""

    index: int
    concept: str | None
    image_ids: list[int]
    rows: list[SampleRow] = field(default_factory=list)
    recorded_ids: list[int] = field(default_factory=list)
    tables: dict[str, pa.Table] = field(default_factory=dict)


def prepare_chunk(dataset: CocoDataset, inpainter: Inpainter, margin_px: float, concept: str,
                  image_ids: Sequence[int]) -> list[PairInput | SampleRow]:
    """Each image loaded, masked and inpainted (`prepare_pair`), or its skip row; CPU only, no model."""
    return [prepare_pair(dataset, concept, image_id, inpainter, margin_px) for image_id in image_ids]


def record_prepared(inputs: ChunkInputs, concept: str, prepared: Sequence[PairInput | SampleRow]
                    ) -> tuple[list[SampleRow], list[int], PairRecord | None]:
    """Caption and record the prepared pairs: samples rows, the ids recorded and their `PairRecord` (or None)."""
    rows = [item for item in prepared if isinstance(item, SampleRow)]
    pairs = [item for item in prepared if isinstance(item, PairInput)]
    if not pairs:
        return rows, [], None
    if inputs.config.save_inpainted:
        folder = name_folder(Path(inputs.config.save_inpainted), concept)
        folder.mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            pair.inpainted.save(folder / f"{pair.image_id:012d}.png")
    b = len(pairs)
    captions = caption_images(inputs.adapter, [p.original for p in pairs] + [p.inpainted for p in pairs],
                              batch_size=2 * b)
    targets = [choose_target(captions.token_ids[k], inputs.concept_ids[concept], inputs.prefix_ids) for k in range(b)]
    record = record_pairs(inputs.adapter, [p.original for p in pairs], [p.inpainted for p in pairs], targets,
                          RecordConfig(positions=inputs.config.positions, top_k=inputs.config.top_k))
    for k, (pair, target) in enumerate(zip(pairs, targets, strict=True)):
        rows.append(SampleRow(
            concept, pair.image_id, pair.file_name, mask_area=pair.mask_area, mask_fraction=pair.mask_fraction,
            caption_original=captions.texts[k], caption_inpainted=captions.texts[b + k],
            target_token_id=target.token_id, target_source=target.source,
            target_position=int(record.target_position[k]),
        ))
    return rows, [p.image_id for p in pairs], record


def record_chunk(inputs: ChunkInputs, concept: str, image_ids: Sequence[int]
                 ) -> tuple[list[SampleRow], list[int], PairRecord | None]:
    """Samples rows of a chunk of one concept's images, the ids recorded and their `PairRecord` (or None)."""
    prepared = prepare_chunk(inputs.dataset, inputs.inpainter, inputs.config.margin_px, concept, image_ids)
    return record_prepared(inputs, concept, prepared)


def chunk_tables(run_id: str, concept: str, recorded_ids: Sequence[int], record: PairRecord | None
                 ) -> dict[str, pa.Table]:
    """The ``neuron_stats``, ``token_stats`` and ``neuron_rollup`` tables of a chunk's record (none without one)."""
    if record is None:
        return {}
    stats = neuron_stats_table(run_id, concept, recorded_ids, record)
    return {"neuron_stats": stats, "token_stats": token_stats_table(run_id, concept, recorded_ids, record),
            "neuron_rollup": neuron_rollup_table(stats)}


def chunk_result(inputs: ChunkInputs, index: int, concept: str | None, image_ids: Sequence[int]) -> ChunkResult:
    """Everything chunk ``index`` adds to the warehouse (``concept`` None: a run without pairs, nothing)."""
    if concept is None:
        return ChunkResult(index, None, list(image_ids))
    rows, recorded, record = record_chunk(inputs, concept, image_ids)
    return ChunkResult(index, concept, list(image_ids), rows, recorded,
                       chunk_tables(inputs.run_id, concept, recorded, record))


def commit_chunk(wh: warehouse.Warehouse, plan: RunPlan, result: ChunkResult,
                 advance: Callable[[int], Any] | None = None) -> None:
    """Commit a chunk's rows as one atomic batch (the run's ``runs`` and ``splits`` rows ride with the first
    batch) and count it in ``plan.summary``. A pair skipped again for the reason already stored gets no new
    row. ``advance``: told the number of pairs the chunk settled (a progress counter)."""
    rows = [row for row in result.rows if row.status == "ok"
            or plan.skipped_before.get((row.concept, row.image_id)) != row.skip_reason]
    with wh.batch() as batch:
        if plan.pending_run is not None:
            batch.add("runs", plan.pending_run)
            batch.add("splits", splits_columns(plan.run_id, plan.splits))
        if rows:
            batch.add("samples", samples_columns(plan.run_id, rows))
        for table in RECORD_TABLES:
            if table in result.tables:
                batch.add(table, result.tables[table])
    plan.pending_run = None
    summary = plan.summary
    if batch.record is not None:
        summary.batches += 1
        summary.bytes_written += sum(entry.bytes for entry in batch.record.files)
    summary.recorded += len(result.recorded_ids)
    summary.skipped += len(result.image_ids) - len(result.recorded_ids)
    if advance is not None:
        advance(len(result.image_ids))
