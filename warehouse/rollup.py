"""The ``neuron_rollup`` table: per-neuron sums of ``neuron_stats`` rows, so per-neuron means need no image rows.

    rollup_rows(neuron_stats_rows)      # -> neuron_rollup rows: one per (run, concept, layer, unit)
    merge_rollups([rollup, rollup])     # -> the same rows summed (rollups of disjoint image sets add up)
    complete_partitions(records)        # -> {(run_id, concept)} whose rollup covers all their neuron_stats
    rollup_split(records)               # -> the files of the three views readers sum neurons from

The values are summed as the views read them: float16 as stored, ``d_mean`` = FLOAT(o_mean) − FLOAT(i_mean)
as the ``neuron_stats`` view computes it, every value widened to float64. Every float16 value, and every
float32 difference of two of them, is an integer multiple of 2^-24 below 2^17 in magnitude, so these float64
sums are exact (whatever the order of addition) for up to 4096 images per (run, concept); a mean taken from
them is the one DuckDB computes from the image rows, to the last bit.
``sum_abs_o_mean`` (the sum of |o_mean|, which ``queries/massive_units.sql`` averages over every concept of a
run) is exact in the same way while the run's total stays below 2^29. Rollup files written before that column
existed read it as null; merging them gives null, and readers then take |o_mean| from the image rows.

A (run, concept) partition's rollup is *complete* when every committed batch that holds ``neuron_stats`` rows
of it also holds its ``neuron_rollup`` rows (ingest writes both in one batch; `kneuron.warehouse.compact` keeps or
rebuilds them together). Warehouses written before the table existed have no rollup: their partitions are
incomplete, and readers use the image rows (`kneuron.warehouse.connect`: ``neuron_stats_unrolled``).

Every rollup file holds one row per (run, concept, layer, unit) (the writer refuses duplicates: `TableSpec`
``unique_sorted``), so a complete partition with a single rollup file — what `kneuron compact` leaves — already
holds its per-neuron totals: readers take them as they are, without a GROUP BY (``neuron_rollup_summed``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kneuron.warehouse.manifest import BatchRecord, FileRecord
from kneuron.warehouse.schema import conform

KEY = ["run_id", "concept", "layer", "unit"]
VALUES = ("d_max", "d_mean", "g_max", "g_mean", "abs_o_mean")


def rollup_rows(stats: pa.Table | pa.RecordBatch) -> pa.Table:
    """The ``neuron_rollup`` rows of ``neuron_stats`` rows (any order; any runs, concepts and images), sorted.

    stats: rows with the ``neuron_stats`` columns (values are rounded to float16 first, as they are stored).
    """
    rows = conform("neuron_stats", stats)
    fast = _image_blocks(rows)
    if fast is not None:
        return fast

    def widened(column: str) -> pa.ChunkedArray:
        return rows.column(column).cast(pa.float32())

    columns = {key: rows.column(key) for key in KEY}
    columns["d_max"] = widened("d_max").cast(pa.float64())
    columns["d_mean"] = pc.subtract(widened("o_mean"), widened("i_mean")).cast(pa.float64())
    columns["g_max"] = widened("g_max").cast(pa.float64())
    columns["g_mean"] = widened("g_mean").cast(pa.float64())
    columns["abs_o_mean"] = pc.abs(widened("o_mean")).cast(pa.float64())
    summed = pa.table(columns).group_by(KEY).aggregate(
        [(name, "sum") for name in VALUES] + [("d_max", "count", pc.CountOptions(mode="all"))])
    return _finish(summed, "d_max_count", {f"{name}_sum": f"sum_{name}" for name in VALUES})


def _image_blocks(rows: pa.Table) -> pa.Table | None:
    """`rollup_rows` by a numpy reshape when ``rows`` are what ingest writes — one run and concept, blocks of
    one image each holding the same strictly ascending (layer, unit) sequence — else None (the general path).
    The sums are the same either way (they are exact)."""
    n = rows.num_rows
    if n == 0:
        return None
    heads = {key: rows.column(key)[0] for key in ("run_id", "concept")}
    if any(pc.any(pc.not_equal(rows.column(key), value)).as_py() for key, value in heads.items()):
        return None
    image = rows.column("image_id").to_numpy()
    k = int(np.argmax(image != image[0])) or n
    if n % k:
        return None
    m = n // k
    layer = rows.column("layer").to_numpy().reshape(m, k)
    unit = rows.column("unit").to_numpy().reshape(m, k)
    first_l, first_u = layer[0], unit[0]
    ascending = (first_l[1:] > first_l[:-1]) | ((first_l[1:] == first_l[:-1]) & (first_u[1:] > first_u[:-1]))
    if not (ascending.all() and (layer == first_l).all() and (unit == first_u).all()
            and (image.reshape(m, k) == image[::k, None]).all() and len(np.unique(image[::k])) == m):
        return None

    def values(column: str) -> np.ndarray:
        return cast("np.ndarray", rows.column(column).to_numpy().astype(np.float32).reshape(m, k))

    sums = {"d_max": values("d_max"), "d_mean": values("o_mean") - values("i_mean"), "g_max": values("g_max"),
            "g_mean": values("g_mean"), "abs_o_mean": np.abs(values("o_mean"))}
    data: dict[str, object] = {
        "run_id": pa.repeat(heads["run_id"], k), "concept": pa.repeat(heads["concept"], k),
        "layer": first_l, "unit": first_u, "n_images": np.full(k, m, dtype=np.int32)}
    data.update({f"sum_{name}": array.astype(np.float64).sum(axis=0) for name, array in sums.items()})
    return conform("neuron_rollup", data)


def merge_rollups(parts: Iterable[pa.Table]) -> pa.Table:
    """``neuron_rollup`` rows that sum ``parts`` (rollups of disjoint sets of images) per neuron, sorted."""
    tables = [conform("neuron_rollup", part) for part in parts]
    if not tables:
        return conform("neuron_rollup", {name: [] for name in ("run_id", "concept", "layer", "unit", "n_images",
                                                                *(f"sum_{v}" for v in VALUES))})
    strict = pc.ScalarAggregateOptions(skip_nulls=False)  # a part without a sum (an older file): no sum
    summed = pa.concat_tables(tables).group_by(KEY).aggregate(
        [("n_images", "sum")] + [(f"sum_{name}", "sum", strict) for name in VALUES])
    return _finish(summed, "n_images_sum", {f"sum_{name}_sum": f"sum_{name}" for name in VALUES})


def _finish(summed: pa.Table, count: str, sums: dict[str, str]) -> pa.Table:
    """Rename an aggregate's columns to the ``neuron_rollup`` schema, cast and sort by (run, concept, layer, unit)."""
    data = {key: summed.column(key) for key in KEY}
    data["n_images"] = summed.column(count)
    data.update({target: summed.column(source) for source, target in sums.items()})
    table = conform("neuron_rollup", data)
    return table.sort_by([(key, "ascending") for key in KEY])


def complete_partitions(records: Iterable[BatchRecord]) -> set[tuple[str, str]]:
    """(run_id, concept) partitions with neuron_stats whose every neuron_stats batch also has their rollup."""
    with_stats: set[tuple[str, str]] = set()
    incomplete: set[tuple[str, str]] = set()
    for record in records:
        stats = {partition_key(entry.partition) for entry in record.files if entry.table == "neuron_stats"}
        rolled = {partition_key(entry.partition) for entry in record.files if entry.table == "neuron_rollup"}
        with_stats |= stats
        incomplete |= stats - rolled
    return with_stats - incomplete


#: the views `rollup_split` fills: name -> the table they show
ROLLUP_VIEWS = {"neuron_rollup_summed": "neuron_rollup", "neuron_rollup_parts": "neuron_rollup",
                "neuron_stats_unrolled": "neuron_stats"}


def rollup_split(records: list[BatchRecord]) -> dict[str, list[FileRecord]]:
    """The committed files behind the three views per-neuron sums are read from (`ROLLUP_VIEWS`), commit order.

    ``neuron_rollup_summed``: the rollup file of each complete partition that has exactly one (its rows are the
    partition's per-neuron totals); ``neuron_rollup_parts``: the rollup files of complete partitions with
    several (per-batch sums, to be added up); ``neuron_stats_unrolled``: the image rows of every partition that
    is not complete. No image row of a complete partition is listed.
    """
    complete = complete_partitions(records)
    rollups = [e for r in records for e in r.files
               if e.table == "neuron_rollup" and partition_key(e.partition) in complete]
    count: dict[tuple[str, str], int] = {}
    for entry in rollups:
        count[partition_key(entry.partition)] = count.get(partition_key(entry.partition), 0) + 1
    return {
        "neuron_rollup_summed": [e for e in rollups if count[partition_key(e.partition)] == 1],
        "neuron_rollup_parts": [e for e in rollups if count[partition_key(e.partition)] > 1],
        "neuron_stats_unrolled": [e for r in records for e in r.files
                                  if e.table == "neuron_stats" and partition_key(e.partition) not in complete],
    }


def partition_key(values: dict[str, object]) -> tuple[str, str]:
    """The (run_id, concept) of a file's partition values, as strings."""
    return str(values.get("run_id")), str(values.get("concept"))
