"""Queries over 2,000 small batches, before and after ``kneuron compact``.

The warehouse: 2,000 batches as ``kneuron ingest --batch-size 1`` leaves them with the tiny model's shape (4
layers x 256 units, 16 token rows per layer): each batch one pair's ``samples``, ``neuron_stats``,
``token_stats`` and ``neuron_rollup`` files (8,000 files, 2,000 commit records), 8 concepts. Timed, before and
after compaction (which must not change any result):

- ``open``: `queries.connect` (read the commit records, stat every file, make the views);
- ``query``: three analyses — rows per concept, the per-concept mean of d_max, and a join of samples with
  token_stats — on that connection;
- the compaction itself.

    pytest benchmarks/test_bench_compact.py --benchmark-enable -s
    KNEURON_BENCH_COMPACT_BATCHES=200 pytest benchmarks/test_bench_compact.py --benchmark-enable -s
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kneuron import queries
from kneuron.warehouse import Warehouse, rollup_rows, verify_warehouse
from kneuron.warehouse.compact import compact
from tests.helpers.warehouse_rows import run_row

N_BATCHES = int(os.environ.get("KNEURON_BENCH_COMPACT_BATCHES") or 2000)
N_LAYERS, D_FF, TOP_K, N_CONCEPTS = 4, 256, 4, 8
RUN = "bench-compact"
QUERIES = [
    "SELECT concept, count(*) FROM neuron_stats GROUP BY ALL ORDER BY ALL",
    "SELECT concept, avg(d_max), max(g_max) FROM neuron_stats WHERE layer = 2 GROUP BY ALL ORDER BY ALL",
    "SELECT s.concept, count(*), avg(t.o_act) FROM samples AS s JOIN token_stats AS t USING (run_id, concept, "
    "image_id) WHERE t.rank = 0 GROUP BY ALL ORDER BY ALL",
]


def build(root: Path) -> None:
    rng = np.random.default_rng(0)
    neurons = N_LAYERS * D_FF
    tokens = N_LAYERS * TOP_K
    with Warehouse.open(root, create=True) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row(RUN))
        for image in range(N_BATCHES):
            concept = f"shape_{image % N_CONCEPTS}"
            stats = pa.table({
                "run_id": [RUN] * neurons, "concept": [concept] * neurons, "image_id": np.full(neurons, image),
                "layer": np.repeat(np.arange(N_LAYERS), D_FF), "unit": np.tile(np.arange(D_FF), N_LAYERS),
                **{c: rng.standard_normal(neurons).astype(np.float32)
                   for c in ("o_mean", "i_mean", "d_max", "g_max", "g_mean")}})
            with wh.batch() as batch:
                batch.add("samples", {"run_id": [RUN], "concept": [concept], "image_id": [image],
                                      "file_name": [f"{image}.png"], "status": ["ok"]})
                batch.add("neuron_stats", stats)
                batch.add("neuron_rollup", rollup_rows(stats))
                batch.add("token_stats", {
                    "run_id": [RUN] * tokens, "concept": [concept] * tokens, "image_id": [image] * tokens,
                    "layer": np.repeat(np.arange(N_LAYERS), TOP_K), "position": [0] * tokens,
                    "seq_position": [5] * tokens, "rank": np.tile(np.arange(TOP_K), N_LAYERS),
                    "unit": rng.integers(0, D_FF, tokens), "o_act": rng.standard_normal(tokens),
                    "i_act": rng.standard_normal(tokens), "g": rng.standard_normal(tokens)})


def measure(root: Path) -> tuple[float, float, list]:
    """(seconds to connect, seconds for the queries, their results)."""
    started = time.perf_counter()
    con = queries.connect(root)
    opened = time.perf_counter() - started
    started = time.perf_counter()
    results = [con.sql(sql).fetchall() for sql in QUERIES]
    return opened, time.perf_counter() - started, results


@pytest.mark.slow
def test_bench_queries_before_and_after_compaction(benchmark, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("compact") / "wh"
    started = time.perf_counter()
    build(root)
    build_s = time.perf_counter() - started
    files_before = sum(len(b.files) for b in Warehouse.open(root).batches)
    open_before, query_before, before = measure(root)
    started = time.perf_counter()
    result = compact(root)
    compact_s = time.perf_counter() - started
    outcome: dict[str, object] = {}

    def after() -> None:
        outcome["open"], outcome["query"], outcome["results"] = measure(root)

    benchmark.pedantic(after, rounds=1, iterations=1)
    assert outcome["results"] == before and verify_warehouse(root).ok
    open_after, query_after = float(outcome["open"]), float(outcome["query"])  # type: ignore[arg-type]
    info = {"batches": N_BATCHES, "files_before": files_before, "files_after": result.files_after,
            "build_s": round(build_s, 1), "compact_s": round(compact_s, 1),
            "open_before_s": round(open_before, 2), "open_after_s": round(open_after, 3),
            "query_before_s": round(query_before, 2), "query_after_s": round(query_after, 3),
            "speedup_open": round(open_before / open_after, 1), "speedup_query": round(query_before / query_after, 1)}
    benchmark.extra_info.update(info)
    print(json.dumps(info))
    assert query_after < query_before
