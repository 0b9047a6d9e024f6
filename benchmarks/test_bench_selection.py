"""Two-stage selection over 10^8 ``neuron_stats`` rows: DuckDB (``queries/two_stage.sql``) against pandas.

The data: 10 concepts x 28 identification images x 32 layers x U units (U = rows / 8960, i.e. 11160 at
10^8 rows, about MiniGPT-4-7B's d_ff = 11008), written by DuckDB itself as Parquet, hive-partitioned by
concept like the warehouse. Values are deterministic hashes: uniform noise plus a few "hot" neurons per
concept (stage 1: 1 in 40, stage 2: 1 in 60), so both knees exist.

Both sides run the default selection (`SelectionConfig()`: d_max / g_max, mean over images, triangle/knee
threshold on both stages, stage 2 over the candidates) and must give the same N_k for every concept.
DuckDB runs with ``memory_limit = '3GB'``; its peak RSS (psutil, sampled every 20 ms) must stay under 4 GiB.
The time ratio pandas / DuckDB goes to ``benchmark.extra_info``.

    KNEURON_BENCH_SELECTION_ROWS=1000000 pytest benchmarks/test_bench_selection.py --benchmark-enable
    pytest benchmarks/test_bench_selection.py --benchmark-enable          # the full 10^8 rows (minutes)

``KNEURON_BENCH_SELECTION_ROWS`` (default 10^8) sets the DuckDB size; ``KNEURON_BENCH_SELECTION_PANDAS_ROWS``
(default: the same) caps pandas: pandas then runs on the first concepts that fit (and DuckDB is timed again
on exactly those, for the ratio). pandas at 10^8 rows peaks at several GB (int64 image ids, float64 means,
group codes), so on a crowded machine set it lower.
"""
from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import psutil
import pytest

from kneuron.queries.selection import SelectionConfig, run_selection

ROWS = int(os.environ.get("KNEURON_BENCH_SELECTION_ROWS") or 10**8)
N_CONCEPTS, N_IMAGES, N_LAYERS = 10, 28, 32
N_UNITS = max(1, round(ROWS / (N_CONCEPTS * N_IMAGES * N_LAYERS)))
ROWS_PER_CONCEPT = N_IMAGES * N_LAYERS * N_UNITS
PANDAS_ROWS = int(os.environ.get("KNEURON_BENCH_SELECTION_PANDAS_ROWS") or N_CONCEPTS * ROWS_PER_CONCEPT)
RUN_ID = "bench"
MEMORY_LIMIT = "3GB"
PEAK_RSS_LIMIT = 4 * 1024**3


def write_neuron_stats(directory: Path) -> None:
    """Write the synthetic ``neuron_stats`` as ``directory/concept=<c>/*.parquet`` with DuckDB."""
    neurons = N_LAYERS * N_UNITS
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute(f"""
        COPY (
            SELECT '{RUN_ID}' AS run_id,
                   'concept_' || lpad(CAST(c AS VARCHAR), 2, '0') AS concept,
                   CAST(img AS BIGINT) AS image_id,
                   CAST(n // {N_UNITS} AS SMALLINT) AS layer,
                   CAST(n % {N_UNITS} AS SMALLINT) AS unit,
                   CAST((hash(i, 3) % 1000) / 1000.0 AS FLOAT) AS o_mean,
                   CAST((hash(i, 4) % 1000) / 1000.0 AS FLOAT) AS i_mean,
                   CAST((hash(i, 1) % 1000000) / 1e6 - 0.5
                        + CASE WHEN hash(c, n, 7) % 40 = 0 THEN 3 * (hash(c, n, 8) % 1000) / 1000.0 ELSE 0 END
                        AS FLOAT) AS d_max,
                   CAST((hash(i, 2) % 1000000) / 1e6 - 0.5
                        + CASE WHEN hash(c, n, 9) % 60 = 0 THEN 3 * (hash(c, n, 10) % 1000) / 1000.0 ELSE 0 END
                        AS FLOAT) AS g_max,
                   CAST((hash(i, 5) % 1000000) / 1e6 - 0.5 AS FLOAT) AS g_mean
            FROM (SELECT i, i // {ROWS_PER_CONCEPT} AS c, (i // {neurons}) % {N_IMAGES} AS img, i % {neurons} AS n
                  FROM range({N_CONCEPTS * ROWS_PER_CONCEPT}) AS t(i))
        ) TO '{directory}' (FORMAT parquet, PARTITION_BY (concept), WRITE_PARTITION_COLUMNS true,
                            COMPRESSION zstd, ROW_GROUP_SIZE 1048576)
    """)
    con.close()


def concept_names(n: int) -> list[str]:
    return [f"concept_{c:02d}" for c in range(n)]


def connect_views(directory: Path, concepts: list[str]) -> duckdb.DuckDBPyConnection:
    """The views the selection reads, over the Parquet files of ``concepts`` (as `kneuron.warehouse.connect` makes)."""
    files = sorted(str(path) for c in concepts for path in (directory / f"concept={c}").glob("*.parquet"))
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute("CREATE VIEW neuron_stats AS SELECT run_id, concept, image_id, layer, unit, o_mean, i_mean, "
                "d_max, g_max, g_mean, CAST(o_mean - i_mean AS FLOAT) AS d_mean "
                "FROM read_parquet($files, hive_partitioning = true, hive_types_autocast = false)"
                .replace("$files", "[" + ", ".join(f"'{f}'" for f in files) + "]"))
    con.execute(f"""CREATE VIEW samples AS
        SELECT '{RUN_ID}' AS run_id, 'concept_' || lpad(CAST(c AS VARCHAR), 2, '0') AS concept,
               CAST(img AS BIGINT) AS image_id, 'ok' AS status
        FROM range({N_CONCEPTS}) AS a(c), range({N_IMAGES}) AS b(img)""")
    con.execute("CREATE VIEW splits AS SELECT 'x' AS run_id, 'x' AS concept, CAST(0 AS BIGINT) AS image_id, "
                "'eval' AS split WHERE false")
    return con


def duckdb_selection(con: duckdb.DuckDBPyConnection, concepts: list[str]) -> dict[str, set[tuple[int, int]]]:
    """N_k per concept by `run_selection` (default config, no baselines)."""
    table = run_selection(con, SelectionConfig(run_id=RUN_ID, concepts=tuple(concepts), baselines=False)).neuron_sets
    out: dict[str, set[tuple[int, int]]] = {c: set() for c in concepts}
    for concept, layer, unit in zip(*(table.column(n).to_pylist() for n in ("concept", "layer", "unit")), strict=True):
        out[concept].add((layer, unit))
    return out


def knee_threshold(scores: np.ndarray) -> float:
    """Triangle rule on the positive scores (already sorted descending, ties by (layer, unit))."""
    s = scores[scores > 0]
    m = s.size
    if m < 3 or s[0] == s[-1]:
        return 0.0
    distance = np.abs(1.0 - np.arange(m) / (m - 1) - (s - s[-1]) / (s[0] - s[-1]))
    j = int(np.argmax(distance))  # first maximum
    return float(s[j]) if distance[j] > 0 else 0.0


def pandas_selection(directory: Path, concepts: list[str]) -> dict[str, set[tuple[int, int]]]:
    """The same default selection in pandas: read, keep ok images, mean per neuron, knee, knee over C_k."""
    ok_images = {c: np.arange(N_IMAGES) for c in concepts}  # the samples table: every image is ok
    parts = []
    for concept in concepts:
        for path in sorted((directory / f"concept={concept}").glob("*.parquet")):
            part = pd.read_parquet(path, columns=["run_id", "concept", "image_id", "layer", "unit", "d_max", "g_max"])
            part = part[(part["run_id"] == RUN_ID) & part["image_id"].isin(ok_images[concept])]
            part = part.drop(columns="run_id")
            part["concept"] = pd.Categorical(part["concept"], categories=concepts)
            parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    del parts
    means = (frame[["concept", "layer", "unit"]]
             .assign(d=frame["d_max"].astype(np.float64), g=frame["g_max"].astype(np.float64))
             .groupby(["concept", "layer", "unit"], observed=True)[["d", "g"]].mean()
             .reset_index())
    out: dict[str, set[tuple[int, int]]] = {}
    for concept, part in means.groupby("concept", observed=True):
        part = part.sort_values(["d", "layer", "unit"], ascending=[False, True, True])
        candidates = part[part["d"] > knee_threshold(part["d"].to_numpy())]
        candidates = candidates.sort_values(["g", "layer", "unit"], ascending=[False, True, True])
        chosen = candidates[candidates["g"] > knee_threshold(candidates["g"].to_numpy())]
        out[str(concept)] = set(zip(chosen["layer"].astype(int), chosen["unit"].astype(int), strict=True))
    return out


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


@pytest.mark.slow
def test_bench_two_stage_selection_duckdb_vs_pandas(benchmark, tmp_path_factory):
    directory = tmp_path_factory.mktemp("neuron_stats")
    started = time.perf_counter()
    write_neuron_stats(directory)
    write_seconds = time.perf_counter() - started
    all_concepts = concept_names(N_CONCEPTS)

    con = connect_views(directory, all_concepts)
    result: dict[str, dict] = {}

    def run_duckdb() -> None:
        with PeakRSS() as rss:
            result["sets"] = duckdb_selection(con, all_concepts)
        result["peak_rss"] = rss.peak

    started = time.perf_counter()
    benchmark.pedantic(run_duckdb, rounds=1, iterations=1)
    duckdb_seconds = time.perf_counter() - started
    con.close()
    assert result["peak_rss"] < PEAK_RSS_LIMIT, f"DuckDB peak RSS {result['peak_rss'] / 1024**3:.2f} GiB"
    sizes = {c: len(s) for c, s in result["sets"].items()}
    assert all(0 < n < 0.01 * N_LAYERS * N_UNITS + 50 for n in sizes.values()), sizes

    # pandas on as many whole concepts as PANDAS_ROWS allows; DuckDB timed again on those if they are fewer.
    n_pandas = max(1, min(N_CONCEPTS, math.floor(PANDAS_ROWS / ROWS_PER_CONCEPT)))
    pandas_concepts = all_concepts[:n_pandas]
    if n_pandas == N_CONCEPTS:
        duckdb_sets, duckdb_subset_seconds = result["sets"], duckdb_seconds
    else:
        subset = connect_views(directory, pandas_concepts)
        started = time.perf_counter()
        duckdb_sets = duckdb_selection(subset, pandas_concepts)
        duckdb_subset_seconds = time.perf_counter() - started
        subset.close()
    started = time.perf_counter()
    pandas_sets = pandas_selection(directory, pandas_concepts)
    pandas_seconds = time.perf_counter() - started
    assert pandas_sets == duckdb_sets

    benchmark.extra_info.update({
        "rows": N_CONCEPTS * ROWS_PER_CONCEPT,
        "shape": f"{N_CONCEPTS} concepts x {N_IMAGES} images x {N_LAYERS} layers x {N_UNITS} units",
        "write_parquet_seconds": round(write_seconds, 2),
        "duckdb_seconds": round(duckdb_seconds, 2),
        "duckdb_peak_rss_gib": round(result["peak_rss"] / 1024**3, 3),
        "duckdb_memory_limit": MEMORY_LIMIT,
        "pandas_rows": n_pandas * ROWS_PER_CONCEPT,
        "duckdb_seconds_on_pandas_rows": round(duckdb_subset_seconds, 2),
        "pandas_seconds": round(pandas_seconds, 2),
        "pandas_over_duckdb": round(pandas_seconds / duckdb_subset_seconds, 2),
        "n_selected": sizes,
    })
