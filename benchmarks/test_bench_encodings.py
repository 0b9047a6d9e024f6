"""Parquet encodings of the five float16 ``neuron_stats`` values at MiniGPT-4-7B shape, on random and real data.

One (concept, image) pair at 7B shape is L = 32 layers x d_ff = 11008 units, five float16 values per unit
(o_mean, i_mean, d_max, g_max, g_mean). Each candidate writes those five columns as one Parquet file in memory;
the benchmark reports bytes / raw float16 bytes per candidate, and checks that every candidate DuckDB can read
gives back the same float16 bit patterns (lossless). It also reports the order-0 entropy of each column's
float16 bit patterns: no coder that treats values as independent symbols (zstd on PLAIN or BYTE_STREAM_SPLIT
bytes included) gets below it.

Data kinds:
- ``random``: the tensors of ``test_bench_storage.py`` (heavy-tailed, close to incompressible).
- ``real``: the ``neuron_stats`` rows of a recorded warehouse (``KNEURON_BENCH_REAL_WAREHOUSE``; skipped
  without it), tiled to 7B width: 7B layer l, segment s (of d_ff / width) takes the unit vector of recorded
  (image, layer) number ``(l * segments + s) mod n_vectors``, all five columns from the same source, so no
  vector repeats within the pair while n_vectors >= 32 x segments. A warehouse of the SmolLM2 testbed
  (30 x 1536 units, 12 images: 360 vectors) is made by::

    kneuron world W --n-train 0 --n-val 300 --n-test 0
    kneuron ingest --coco-root W --split val --model smollm2-shapes-patch --concept circle \
        --images-per-concept 12 --batch-size 4 --warehouse WH
    KNEURON_BENCH_REAL_WAREHOUSE=WH pytest benchmarks/test_bench_encodings.py -s
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_bench_storage import D_FF, N_LAYERS, _neuron_stats, _signals

VALUES = ("o_mean", "i_mean", "d_max", "g_max", "g_mean")
REAL_WAREHOUSE = os.environ.get("KNEURON_BENCH_REAL_WAREHOUSE")

# name -> (cast the values to float32 first?, writer options); the first is what the warehouse writes
CANDIDATES: dict[str, tuple[bool, dict[str, Any]]] = {
    "f16 PLAIN zstd-3 (current)": (False, {"compression": "zstd", "compression_level": 3}),
    "f16 PLAIN zstd-1": (False, {"compression": "zstd", "compression_level": 1}),
    "f16 PLAIN zstd-9": (False, {"compression": "zstd", "compression_level": 9}),
    "f16 PLAIN zstd-19": (False, {"compression": "zstd", "compression_level": 19}),
    "f16 PLAIN gzip": (False, {"compression": "gzip"}),
    "f16 PLAIN brotli": (False, {"compression": "brotli"}),
    "f16 PLAIN lz4": (False, {"compression": "lz4"}),
    "f16 dictionary zstd-3": (False, {"compression": "zstd", "compression_level": 3, "use_dictionary": True}),
    "f16 BYTE_STREAM_SPLIT zstd-3": (False, {"compression": "zstd", "compression_level": 3,
                                            "column_encoding": dict.fromkeys(VALUES, "BYTE_STREAM_SPLIT")}),
    "f32 BYTE_STREAM_SPLIT zstd-3": (True, {"compression": "zstd", "compression_level": 3,
                                           "column_encoding": dict.fromkeys(VALUES, "BYTE_STREAM_SPLIT")}),
    "f32 BYTE_STREAM_SPLIT zstd-9": (True, {"compression": "zstd", "compression_level": 9,
                                           "column_encoding": dict.fromkeys(VALUES, "BYTE_STREAM_SPLIT")}),
}


def random_values() -> dict[str, np.ndarray]:
    """The five float16 columns ``[L * d_ff]`` of the storage benchmark's random pair."""
    table = _neuron_stats(*_signals(seed=0), image_id=0)
    return {name: table.column(name).to_numpy() for name in VALUES}


def real_values(root: str) -> dict[str, np.ndarray]:
    """The five float16 columns ``[L * d_ff]`` tiled from a warehouse's recorded rows (module docstring)."""
    from kneuron.warehouse.connect import connect

    con = connect(root)
    width = int(con.execute("SELECT max(unit) + 1 FROM neuron_stats").fetchall()[0][0])
    rows = con.sql(f"SELECT {', '.join(VALUES)} FROM neuron_stats ORDER BY image_id, layer, unit").to_arrow_table()
    vectors = {name: rows.column(name).to_numpy().astype(np.float16).reshape(-1, width) for name in VALUES}
    n_vectors = len(vectors["o_mean"])
    segments = -(-D_FF // width)
    out = {name: np.empty((N_LAYERS, D_FF), np.float16) for name in VALUES}
    for layer in range(N_LAYERS):
        for segment in range(segments):
            source = (layer * segments + segment) % n_vectors
            lo, hi = segment * width, min(D_FF, (segment + 1) * width)
            for name in VALUES:
                out[name][layer, lo:hi] = vectors[name][source, :hi - lo]
    return {name: array.ravel() for name, array in out.items()}


def entropy_bits(values: np.ndarray) -> float:
    """Order-0 entropy (bits per value) of the float16 bit patterns of ``values``."""
    _, counts = np.unique(values.view(np.uint16), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def measure(values: dict[str, np.ndarray], tmp: Path) -> dict[str, Any]:
    """Bytes / raw bytes of every candidate, whether DuckDB reads it back bit-identically, and the entropy floor."""
    table = pa.table({name: pa.array(array) for name, array in values.items()})
    raw = sum(array.nbytes for array in values.values())
    result: dict[str, Any] = {"raw_bytes": raw, "candidates": {}}
    for name, (widen, options) in CANDIDATES.items():
        data = table.cast(pa.schema([pa.field(v, pa.float32()) for v in VALUES])) if widen else table
        buffer = io.BytesIO()
        pq.write_table(data, buffer, **{"use_dictionary": False, **options})
        path = tmp / "candidate.parquet"
        path.write_bytes(buffer.getvalue())
        try:
            back = duckdb.sql(f"SELECT {', '.join(VALUES)} FROM read_parquet('{path}')").to_arrow_table()
            same = all(np.array_equal(back.column(v).to_numpy().astype(np.float16).view(np.uint16),
                                      values[v].view(np.uint16)) for v in VALUES)
            readable = "bit-identical" if same else "DIFFERENT VALUES"
        except duckdb.Error as exc:
            readable = f"DuckDB cannot read: {str(exc).splitlines()[0][:80]}"
        result["candidates"][name] = (len(buffer.getvalue()), readable)
    result["entropy_bits"] = {v: entropy_bits(values[v]) for v in VALUES}
    return result


def _report(kind: str, result: dict[str, Any]) -> None:
    raw = result["raw_bytes"]
    print(f"\n{kind}: five float16 columns at 7B shape, raw {raw:,} bytes")
    for name, (size, readable) in result["candidates"].items():
        print(f"  {name:32s} {size:>10,} bytes  {size / raw:.3f} x raw  {readable}")
    floor = sum(result["entropy_bits"].values()) * raw / 10 / 8
    bits = ", ".join(f"{v} {b:.2f}" for v, b in result["entropy_bits"].items())
    print(f"  order-0 entropy floor {floor:,.0f} bytes ({floor / raw:.3f} x raw); bits per value: {bits}")


@pytest.mark.parametrize("kind", ["random", "real"])
def test_float16_encodings(kind: str, tmp_path: Path) -> None:
    if kind == "real" and not REAL_WAREHOUSE:
        pytest.skip("set KNEURON_BENCH_REAL_WAREHOUSE to a recorded warehouse (see the module docstring)")
    values = random_values() if kind == "random" else real_values(str(REAL_WAREHOUSE))
    result = measure(values, tmp_path)
    _report(kind, result)
    current, readable = result["candidates"]["f16 PLAIN zstd-3 (current)"]
    assert readable == "bit-identical"
    floor = sum(result["entropy_bits"].values()) * result["raw_bytes"] / 10 / 8
    assert current >= 0.95 * floor, "an order-0 coder cannot beat the order-0 entropy by much"


def test_real_pair_through_the_writer(tmp_path: Path) -> None:
    """Bytes per (concept, image) pair of real activations as the warehouse stores them: the tiled real
    ``neuron_stats`` rows (ids included) and a ``samples`` row through the real writer, one batch (token_stats
    rows are the storage benchmark's: its top-k units of random signals)."""
    if not REAL_WAREHOUSE:
        pytest.skip("set KNEURON_BENCH_REAL_WAREHOUSE to a recorded warehouse (see the module docstring)")
    from test_bench_storage import _run_row, _sample, _token_stats

    from kneuron.warehouse import Warehouse
    from kneuron.warehouse.layout import manifest_path

    values = real_values(str(REAL_WAREHOUSE))
    random_table = _neuron_stats(*_signals(seed=0), image_id=1)
    table = random_table
    for name in VALUES:
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values[name]))
    token_stats = _token_stats(*_signals(seed=0), image_id=1)
    with Warehouse.open(tmp_path / "wh", create=True) as wh:
        with wh.batch() as batch:
            batch.add("runs", _run_row())
        with wh.batch() as batch:
            batch.add("samples", _sample(1))
            batch.add("neuron_stats", table)
            batch.add("token_stats", token_stats)
        record = batch.record
    by_table = {entry.table: entry.bytes for entry in record.files}
    total = sum(by_table.values()) + manifest_path(tmp_path / "wh", record.batch_id).stat().st_size
    back = Warehouse.open(tmp_path / "wh").read("neuron_stats")
    for name in VALUES:  # lossless: the stored float16 bit patterns are the written ones
        assert np.array_equal(back.column(name).to_numpy().view(np.uint16), values[name].view(np.uint16))
    print(f"\nreal activations: {total:,} bytes per (concept, image) pair (neuron_stats {by_table['neuron_stats']:,}, "
          f"token_stats {by_table['token_stats']:,}, samples {by_table['samples']:,})")
