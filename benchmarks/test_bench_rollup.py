"""`kneuron select` with the rollup vs from the image rows, on a synthetic warehouse at MiniGPT-4-7B shape.

The warehouse is written by the real writer as ingest writes it: per concept, batches of 8 images, each batch
its ``samples``, ``neuron_stats`` (float16, 32 layers x 11008 units per image) and ``neuron_rollup`` rows.
Values: Gaussian noise plus a few "hot" neurons per concept (stage 1: 1 in 40, stage 2: 1 in 60), so both knees
exist. Three timings of the default selection (`SelectionConfig()`: d_max/g_max, mean over images, knee rule on
both stages), which must select the same sets:

- ``rows``: on a connection whose rollup views are the stand-ins of a warehouse without a rollup
  (`tests.warehouse.test_rollup.without_rollup`), so ``neuron_means`` averages every image row of ``neuron_stats``;
- ``rollup``: as `kneuron select` runs, reading the per-batch rollup as ingest left it (images / 8 rows per neuron);
- ``compacted``: the same after ``kneuron compact --target-rows <one batch>``, which sums each concept's rollup
  into one row per neuron and keeps the image files as they are; ``KNEURON_BENCH_ROLLUP_ROUNDS`` (5) rounds,
  the median reported; also the selection's three queries without storing the sets (``kneuron select`` runs
  two_stage.sql three times: the two-stage sets and the stage1_only / stage2_only baselines at |N_k|) and the
  two-stage query alone, medians of as many rounds.

    KNEURON_BENCH_ROLLUP_CONCEPTS=4 KNEURON_BENCH_ROLLUP_IMAGES=16 pytest benchmarks/test_bench_rollup.py \\
        --benchmark-enable -s                                     # a quick look
    pytest benchmarks/test_bench_rollup.py --benchmark-enable -s  # 80 concepts x 100 images: ~30 GB, long

Sizes: ``KNEURON_BENCH_ROLLUP_CONCEPTS`` (80), ``_IMAGES`` (100), ``_LAYERS`` (32), ``_UNITS`` (11008);
``KNEURON_BENCH_ROLLUP_DIR`` keeps the warehouse there (reused when complete) instead of a temp folder.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kneuron import queries
from kneuron.engine.pipelines.select import select_sets
from kneuron.queries.selection import SelectionConfig, run_selection
from kneuron.warehouse import Warehouse, rollup_rows
from kneuron.warehouse.compact import compact
from tests.helpers.warehouse_rows import run_row
from tests.warehouse.test_rollup import without_rollup

N_CONCEPTS = int(os.environ.get("KNEURON_BENCH_ROLLUP_CONCEPTS") or 80)
N_IMAGES = int(os.environ.get("KNEURON_BENCH_ROLLUP_IMAGES") or 100)
N_LAYERS = int(os.environ.get("KNEURON_BENCH_ROLLUP_LAYERS") or 32)
N_UNITS = int(os.environ.get("KNEURON_BENCH_ROLLUP_UNITS") or 11008)
BATCH = 8
RUN = "bench-rollup"
GOAL_S = 5.0
#: rounds of the compacted selections (medians reported): one is noisy on a shared 2-core machine
ROUNDS = int(os.environ.get("KNEURON_BENCH_ROLLUP_ROUNDS") or 5)


def concept(c: int) -> str:
    return f"concept_{c:03d}"


def build(root: Path) -> None:
    """The synthetic warehouse (see the module docstring); a ``done`` marker makes a kept one reusable."""
    neurons = N_LAYERS * N_UNITS
    layer = np.repeat(np.arange(N_LAYERS, dtype=np.int16), N_UNITS)
    unit = np.tile(np.arange(N_UNITS, dtype=np.int16), N_LAYERS)
    with Warehouse.open(root, create=True) as wh:
        with wh.batch() as batch:
            batch.add("runs", {**run_row(RUN), "n_layers": [N_LAYERS], "d_ff": [N_UNITS]})
            batch.add("splits", {"run_id": [RUN] * (N_CONCEPTS * N_IMAGES),
                                 "concept": [concept(c) for c in range(N_CONCEPTS) for _ in range(N_IMAGES)],
                                 "image_id": [i for _ in range(N_CONCEPTS) for i in range(N_IMAGES)],
                                 "split": ["ident"] * (N_CONCEPTS * N_IMAGES)})
        for c in range(N_CONCEPTS):
            rng = np.random.default_rng(c)
            hot_a = (rng.random(neurons) < 1 / 40) * rng.exponential(1.5, neurons).astype(np.float32)
            hot_g = (rng.random(neurons) < 1 / 60) * rng.exponential(1.5, neurons).astype(np.float32)
            for start in range(0, N_IMAGES, BATCH):
                ids = list(range(start, min(start + BATCH, N_IMAGES)))
                n = len(ids) * neurons

                def noise(shift: np.ndarray | float = 0.0) -> np.ndarray:
                    values = rng.standard_normal(n, dtype=np.float32) * 0.3  # noqa: B023 (called in this iteration)
                    return (values + np.tile(shift, len(ids))  # noqa: B023 (called in this iteration)
                            if isinstance(shift, np.ndarray) else values
                            ).astype(np.float16)

                stats = pa.table({
                    "run_id": pa.repeat(pa.scalar(RUN), n), "concept": pa.repeat(pa.scalar(concept(c)), n),
                    "image_id": np.repeat(np.asarray(ids, dtype=np.int64), neurons),
                    "layer": np.tile(layer, len(ids)), "unit": np.tile(unit, len(ids)),
                    "o_mean": noise(), "i_mean": noise(), "d_max": noise(hot_a), "g_max": noise(hot_g),
                    "g_mean": noise()})
                with wh.batch() as batch:
                    batch.add("samples", {"run_id": [RUN] * len(ids), "concept": [concept(c)] * len(ids),
                                          "image_id": ids, "file_name": [f"{i}.png" for i in ids],
                                          "status": ["ok"] * len(ids)})
                    batch.add("neuron_stats", stats)
                    batch.add("neuron_rollup", rollup_rows(stats))
    (root / "done").write_text("1")


def select(root: Path, rollup: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[float, list]:
    """Seconds of `kneuron select` (`select_sets`, default config: two-stage + baselines) and its sets; without
    ``rollup``, on connections that average the image rows."""
    monkeypatch.undo()
    if not rollup:
        real = queries.connect
        monkeypatch.setattr(queries, "connect", lambda *args, **kwargs: without_rollup(real(*args, **kwargs)))
    started = time.perf_counter()
    result = select_sets(root, SelectionConfig(run_id=RUN))
    seconds = time.perf_counter() - started
    monkeypatch.undo()
    rows = result.selection.neuron_sets.drop_columns(["created_at"]).sort_by(
        [("set_id", "ascending"), ("layer", "ascending"), ("unit", "ascending")]).to_pylist()
    return seconds, rows


def du(root: Path, table: str) -> int:
    return sum(p.stat().st_size for p in (root / table).rglob("*.parquet"))


@pytest.mark.slow
def test_bench_select_with_the_rollup(benchmark, tmp_path_factory, monkeypatch) -> None:
    keep = os.environ.get("KNEURON_BENCH_ROLLUP_DIR")
    root = Path(keep) if keep else tmp_path_factory.mktemp("rollup") / "wh"
    started = time.perf_counter()
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)
        build(root)
    build_s = time.perf_counter() - started
    sizes = {"neuron_stats": du(root, "neuron_stats"), "neuron_rollup": du(root, "neuron_rollup")}

    rows_s, rows_sets = select(root, False, monkeypatch)
    rollup_s, rollup_sets = select(root, True, monkeypatch)
    started = time.perf_counter()
    compact(root, target_rows=BATCH * N_LAYERS * N_UNITS)  # sums the rollup; image files stay as they are
    compact_s = time.perf_counter() - started
    runs: list[tuple[float, list]] = []
    benchmark.pedantic(lambda: runs.append(select(root, True, monkeypatch)), rounds=ROUNDS, iterations=1)
    compacted_s = statistics.median(seconds for seconds, _ in runs)
    queries_s, two_stage_s = [], []  # kneuron select's three queries (no storing), and the two-stage one alone
    for baselines, times in ((True, queries_s), (False, two_stage_s)):
        for _ in range(ROUNDS):
            started = time.perf_counter()
            run_selection(queries.connect(root), SelectionConfig(run_id=RUN, baselines=baselines))
            times.append(time.perf_counter() - started)
    assert rows_sets == rollup_sets and all(sets == rows_sets for _, sets in runs) and rows_sets
    info = {"concepts": N_CONCEPTS, "images": N_IMAGES, "layers": N_LAYERS, "units": N_UNITS,
            "neuron_stats_rows": N_CONCEPTS * N_IMAGES * N_LAYERS * N_UNITS,
            "neuron_stats_gb": round(sizes["neuron_stats"] / 1e9, 2),
            "rollup_gb_per_batch": round(sizes["neuron_rollup"] / 1e9, 3),
            "rollup_gb_compacted": round(du(root, "neuron_rollup") / 1e9, 3),
            "build_s": round(build_s, 1), "compact_rollup_s": round(compact_s, 1),
            "select_rows_s": round(rows_s, 2), "select_rollup_s": round(rollup_s, 2),
            "select_compacted_s": round(compacted_s, 2),
            "select_compacted_rounds_s": [round(seconds, 2) for seconds, _ in runs],
            "three_queries_compacted_s": round(statistics.median(queries_s), 2),
            "two_stage_query_compacted_s": round(statistics.median(two_stage_s), 2),
            "speedup_rollup": round(rows_s / rollup_s, 1), "speedup_compacted": round(rows_s / compacted_s, 1)}
    benchmark.extra_info.update(info)
    print(json.dumps(info))
    if compacted_s >= GOAL_S:
        print(f"goal not met: select with the compacted rollup took {compacted_s:.1f} s (median of {ROUNDS}; "
              f"goal {GOAL_S:.0f} s)")
