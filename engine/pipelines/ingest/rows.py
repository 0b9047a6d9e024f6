"""Warehouse rows of an ingest batch: `PairRecord` -> Arrow tables for ``neuron_stats`` and ``token_stats``
(and the batch's ``neuron_rollup``, the per-neuron sums of its ``neuron_stats`` rows), and plain column dicts
for ``runs``, ``splits`` and ``samples``.

Everything here is columnar numpy / Arrow (no per-row Python loops over neurons): a MiniGPT-4-7B batch of 8
images is 8 x 32 x 11008 = 2.8 M ``neuron_stats`` rows. Rows come out in the tables' sort order
(``image_id, layer, unit`` and ``image_id, layer, position, rank``) when ``image_ids`` ascend, so the writer
does not have to sort them. Types are narrowed by `warehouse.conform` when the batch adds them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kneuron.engine.signals.record import PairRecord
from kneuron.warehouse import rollup_rows


def constant_strings(value: str, n: int) -> pa.Array:
    """A string array of ``n`` copies of ``value`` (built by index, not by a Python list)."""
    return pc.take(pa.array([value], type=pa.string()), pa.array(np.zeros(n, dtype=np.int32)))


def neuron_stats_table(run_id: str, concept: str, image_ids: Sequence[int], record: PairRecord) -> pa.Table:
    """One row per (image, layer, unit): ``o_mean, i_mean, d_max, g_max, g_mean`` of ``record`` ``[B, L, d_ff]``.

    ``image_ids[b]`` is the image of row ``b`` of the record. Returns ``B * L * d_ff`` rows (float32 values;
    the warehouse stores them as float16).
    """
    b, n_layers, d_ff = record.o_mean.shape
    if len(image_ids) != b:
        raise ValueError(f"{len(image_ids)} image ids for a record of {b} pairs")
    n = b * n_layers * d_ff
    columns: dict[str, Any] = {
        "run_id": constant_strings(run_id, n),
        "concept": constant_strings(concept, n),
        "image_id": np.repeat(np.asarray(image_ids, dtype=np.int64), n_layers * d_ff),
        "layer": np.tile(np.repeat(np.arange(n_layers, dtype=np.int16), d_ff), b),
        "unit": np.tile(np.arange(d_ff, dtype=np.int16), b * n_layers),
    }
    for name in ("o_mean", "i_mean", "d_max", "g_max", "g_mean"):
        columns[name] = getattr(record, name).float().numpy().reshape(-1)
    return pa.table(columns)


def neuron_rollup_table(neuron_stats: pa.Table) -> pa.Table:
    """The ``neuron_rollup`` rows of a batch's ``neuron_stats`` rows (`neuron_stats_table`): per (layer, unit)
    the number of images and the float64 sums of the values as stored (`kneuron.warehouse.rollup.rollup_rows`)."""
    return rollup_rows(neuron_stats)


def token_stats_table(run_id: str, concept: str, image_ids: Sequence[int], record: PairRecord) -> pa.Table:
    """One row per (image, layer, position index, rank): the top-k units by ``O_o`` at each position of P.

    ``position`` indexes P (0..P-1), ``seq_position`` is its place in the LLM sequence, ``rank`` 0 is the
    largest activation. Returns ``B * L * P * k`` rows.
    """
    b, n_layers, n_pos, k = record.top_units.shape
    if len(image_ids) != b:
        raise ValueError(f"{len(image_ids)} image ids for a record of {b} pairs")
    n = b * n_layers * n_pos * k
    position = np.tile(np.repeat(np.arange(n_pos, dtype=np.int16), k), b * n_layers)
    seq = record.positions.numpy().astype(np.int64)  # [P], or [B, P] when P differs per row
    seq = np.broadcast_to(seq if seq.ndim == 2 else seq[None, :], (b, n_pos))
    seq_positions = np.broadcast_to(seq[:, None, :, None], (b, n_layers, n_pos, k)).reshape(-1)
    return pa.table({
        "run_id": constant_strings(run_id, n),
        "concept": constant_strings(concept, n),
        "image_id": np.repeat(np.asarray(image_ids, dtype=np.int64), n_layers * n_pos * k),
        "layer": np.tile(np.repeat(np.arange(n_layers, dtype=np.int16), n_pos * k), b),
        "position": position,
        "seq_position": seq_positions,
        "rank": np.tile(np.arange(k, dtype=np.int8), b * n_layers * n_pos),
        "unit": record.top_units.numpy().reshape(-1).astype(np.int64),
        "o_act": record.top_o.float().numpy().reshape(-1),
        "i_act": record.top_i.float().numpy().reshape(-1),
        "g": record.top_g.float().numpy().reshape(-1),
    })


@dataclass
class SampleRow:
    """The ``samples`` row of one (concept, image) pair; ``skip_reason`` set exactly when ``status == "skipped"``.

    ``mask_area``: pixels inpainted (the dilated union of the concept's instance masks); ``mask_fraction``:
    that area over the image area. ``target_position``: sequence position whose logits give ``y^c``.
    """

    concept: str
    image_id: int
    file_name: str
    status: str = "ok"
    skip_reason: str | None = None
    mask_area: int | None = None
    mask_fraction: float | None = None
    caption_original: str | None = None
    caption_inpainted: str | None = None
    target_token_id: int | None = None
    target_source: str | None = None
    target_position: int | None = None


SAMPLE_COLUMNS: tuple[str, ...] = tuple(SampleRow.__dataclass_fields__)


def samples_columns(run_id: str, rows: Sequence[SampleRow]) -> dict[str, list[Any]]:
    """``samples`` columns (lists) of ``rows``, sorted by image id."""
    ordered = sorted(rows, key=lambda row: (row.concept, row.image_id))
    columns: dict[str, list[Any]] = {"run_id": [run_id] * len(ordered)}
    for name in SAMPLE_COLUMNS:
        columns[name] = [getattr(row, name) for row in ordered]
    return columns


def splits_columns(run_id: str, splits: Mapping[str, tuple[Sequence[int], Sequence[int]]]) -> dict[str, list[Any]]:
    """``splits`` columns: for each concept, its identification images (``ident``) then evaluation images."""
    columns: dict[str, list[Any]] = {"run_id": [], "concept": [], "image_id": [], "split": []}
    for concept, (ident, evaluation) in splits.items():
        for split, ids in (("ident", ident), ("eval", evaluation)):
            for image_id in ids:
                columns["run_id"].append(run_id)
                columns["concept"].append(concept)
                columns["image_id"].append(int(image_id))
                columns["split"].append(split)
    return columns
