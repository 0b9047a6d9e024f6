"""What runs inside Ray workers for ``kneuron ingest --engine ray`` (`kneuron.engine.pipelines.ingest.ray` drives it).

- `probe_model` (one task): load the model as a recorder would and return the run's `ModelHead`;
- `PrepareTask` (CPU tasks of Ray Data's ``map_batches``, one chunk per call): load, mask and inpaint it
  (`prepare_chunk`);
- `Recorder` (an actor of Ray Data's actor pool): the model loaded once, captions and records prepared chunks
  (`record_prepared`, `chunk_tables`) and returns the pickled `ChunkResult`.

Rows between stages are ``{"index", "concept", "image_ids", ...}``; pickled payloads (PIL images, Arrow tables)
travel as bytes. Both stages are ``map_batches`` with ``batch_size=1``: one chunk per call, so each chunk's
result reaches the driver (and is committed) as soon as it is recorded, and chunks spread over the recorders.
Nothing here imports Ray: these are plain callables Ray ships to its workers, which keep one dataset per process
(`dataset_of`), so a task does not parse the instances file again.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import torch

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.models import load_model, resolve_device
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.ingest.chunk import (
    ChunkInputs,
    ChunkResult,
    chunk_tables,
    prepare_chunk,
    record_prepared,
)
from kneuron.engine.pipelines.ingest.config import IngestConfig
from kneuron.engine.pipelines.ingest.plan import build_inpainter
from kneuron.engine.pipelines.ingest.start import ModelHead, model_head

_DATASETS: dict[tuple[str, str], CocoDataset] = {}


@dataclass(frozen=True)
class DatasetSource:
    """Where workers read the dataset: its absolute root (the same path on every node) and split."""

    root: str
    split: str


def dataset_of(source: DatasetSource) -> CocoDataset:
    """The dataset of ``source``, opened once per worker process."""
    key = (source.root, source.split)
    if key not in _DATASETS:
        _DATASETS[key] = CocoDataset(source.root, source.split)
    return _DATASETS[key]


def load_adapter(config: IngestConfig, threads: int) -> tuple[VLMAdapter, str]:
    """The model of ``config`` on this worker's device (CUDA when Ray gave the worker a GPU and the device
    allows it), with ``threads`` torch threads; (adapter, device)."""
    torch.set_num_threads(max(1, threads))
    device = resolve_device(config.device)
    adapter = load_model(config.model, device=device, dtype=None if config.dtype == "auto" else config.dtype)
    return adapter, device


def probe_model(config: IngestConfig, source: DatasetSource, concepts: list[str], automatic: bool,
                threads: int) -> ModelHead:
    """Load the model and return the run's `ModelHead` (what the driver needs to plan the run)."""
    adapter, device = load_adapter(config, threads)
    dataset = dataset_of(source)
    return model_head(adapter, dataset, concepts, automatic, config, build_inpainter(config, device), device)


def rows_of(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a Ray Data batch (``batch_format="numpy"``: column -> array); one per chunk."""
    names = list(batch)
    return [{name: batch[name][k] for name in names} for k in range(len(batch[names[0]]))] if names else []


def batch_of(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows back into a batch (column -> list)."""
    return {name: [row[name] for row in rows] for name in rows[0]} if rows else {}


def _chunk(row: dict[str, Any]) -> tuple[int, str, list[int]]:
    return int(row["index"]), str(row["concept"]), [int(i) for i in row["image_ids"]]


class PrepareTask:
    """Ray Data ``map_batches`` function (one chunk per call): the chunk's images loaded, masked and inpainted
    (OpenCV inpainters; CPU)."""

    def __init__(self, config: IngestConfig, source: DatasetSource) -> None:
        self.config = config
        self.source = source
        self.inpainter = build_inpainter(config, "cpu")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out = []
        for row in rows_of(batch):
            index, concept, ids = _chunk(row)
            prepared = prepare_chunk(dataset_of(self.source), self.inpainter, self.config.margin_px, concept, ids)
            out.append({"index": index, "concept": concept, "prepared": pickle.dumps(prepared), "image_ids": ids})
        return batch_of(out)


class Recorder:
    """Ray Data actor: the model, loaded once; each call records one prepared chunk (preparing it first when
    the pipeline has no CPU stage: the ``sd`` inpainter runs here, on the recorder's device)."""

    def __init__(self, config: IngestConfig, source: DatasetSource, head: ModelHead, run_id: str,
                 threads: int) -> None:
        adapter, device = load_adapter(config, threads)
        self.inputs = ChunkInputs(config, dataset_of(source), adapter, build_inpainter(config, device),
                                  head.concept_ids, head.prefix_ids, run_id)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out = []
        for row in rows_of(batch):
            out.append(self.record(row))
        return batch_of(out)

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """One chunk: prepared (or prepared here), captioned, recorded; its pickled `ChunkResult`."""
        index, concept, ids = _chunk(row)
        inputs = self.inputs
        if row.get("prepared") is not None:
            prepared = pickle.loads(row["prepared"])
        else:
            prepared = prepare_chunk(inputs.dataset, inputs.inpainter, inputs.config.margin_px, concept, ids)
        rows, recorded, record = record_prepared(inputs, concept, prepared)
        result = ChunkResult(index, concept, ids, rows, recorded, chunk_tables(inputs.run_id, concept, recorded,
                                                                                record))
        return {"index": index, "result": pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)}
