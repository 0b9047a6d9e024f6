"""The cost of digest-checked reads (`kneuron.warehouse.digests`) against the 7B-shape two-stage selection they guard.

The files are those of ``benchmarks/test_bench_selection.py`` (``KNEURON_BENCH_SELECTION_ROWS`` rows of
``neuron_stats``, default 10^8, hive-partitioned by concept). Per round, in the same process: the selection over
every concept (`run_selection`, as the selection benchmark times it) and a first read's digest check of all its
files (`check_digests` with an empty stamp cache, so every file is hashed; threads as in production). A later
read of unchanged files costs one stat per file (timed too). Medians over ``KNEURON_BENCH_DIGEST_ROUNDS``
rounds (default 3) and their ratios go to ``benchmark.extra_info``; nothing is asserted about time.

    KNEURON_BENCH_SELECTION_ROWS=10000000 pytest benchmarks/test_bench_digest.py --benchmark-enable -s
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

from benchmarks.test_bench_selection import (
    N_CONCEPTS,
    concept_names,
    connect_views,
    duckdb_selection,
    write_neuron_stats,
)
from kneuron.warehouse.digests import check_digests, sha256_of
from kneuron.warehouse.manifest import FileRecord

ROUNDS = int(os.environ.get("KNEURON_BENCH_DIGEST_ROUNDS", "3"))


@pytest.mark.slow
def test_bench_digest_check_against_selection(benchmark, tmp_path_factory, monkeypatch):
    directory = tmp_path_factory.mktemp("neuron_stats")
    write_neuron_stats(directory)
    files = sorted(directory.rglob("*.parquet"))
    entries = [("bench", FileRecord(table="neuron_stats", path=str(p.relative_to(directory)), rows=0,
                                    bytes=p.stat().st_size, partition={}, sha256=sha256_of(p))) for p in files]
    concepts = concept_names(N_CONCEPTS)
    times: dict[str, list[float]] = {"selection": [], "first_read_check": [], "later_read_check": []}

    def one_round() -> None:
        con = connect_views(directory, concepts)
        started = time.perf_counter()
        duckdb_selection(con, concepts)
        times["selection"].append(time.perf_counter() - started)
        con.close()
        cache = tmp_path_factory.mktemp("cache")
        monkeypatch.setenv("KNEURON_CACHE_DIR", str(cache))
        from kneuron.warehouse import digests

        digests._memory.clear()
        started = time.perf_counter()
        check_digests(Path(directory), entries)
        times["first_read_check"].append(time.perf_counter() - started)
        digests._save_all()
        digests._memory.clear()  # a new process: stamps come from the cache file
        started = time.perf_counter()
        check_digests(Path(directory), entries)
        times["later_read_check"].append(time.perf_counter() - started)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    medians = {name: statistics.median(values) for name, values in times.items()}
    info = {
        "rows": int(os.environ.get("KNEURON_BENCH_SELECTION_ROWS", str(10**8))), "files": len(files),
        "bytes": sum(p.stat().st_size for p in files), "rounds": ROUNDS, "cpus": os.cpu_count(),
        **{f"{name}_s": value for name, value in medians.items()},
        **{f"{name}_range_s": [min(values), max(values)] for name, values in times.items()},
        "first_read_over_selection_per_round": [f / s for f, s in zip(times["first_read_check"], times["selection"],
                                                                      strict=True)],
        "first_read_over_selection": medians["first_read_check"] / medians["selection"],
        "later_read_over_selection": medians["later_read_check"] / medians["selection"],
    }
    benchmark.extra_info.update(info)
    print(info)
