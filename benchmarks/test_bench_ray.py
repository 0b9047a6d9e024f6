"""Ingest throughput: ``--engine local`` vs ``--engine ray`` with 1 and 2 recorders, bundled tiny model, CPU.

One Ray instance (``ray.init(num_cpus=2)``, timed on its own) serves both Ray runs, as a running cluster would.
Per run: wall time, the time to the first committed chunk (start-up: for Ray the probe task, worker processes,
actors loading the model), and the steady rate from the first to the last commit. All runs must store the
same tables. Ray overhead per pair = (Ray wall time - local wall time) / pairs.

    pytest benchmarks/test_bench_ray.py --benchmark-enable -s
    KNEURON_BENCH_RAY_IMAGES=4 pytest benchmarks/test_bench_ray.py --benchmark-enable -s    # quicker
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.pipelines.ingest import pipeline as ingest
from kneuron.engine.pipelines.ingest import ray as ingest_ray
from kneuron.engine.pipelines.ingest.pipeline import IngestConfig, run_ingest
from tests.engine.pipelines.ingest.test_ray import assert_same_tables

ray = pytest.importorskip("ray")

IMAGES = int(os.environ.get("KNEURON_BENCH_RAY_IMAGES") or 16)
CONCEPTS = ("circle", "square", "star")
BATCH = 4


def timed_run(run, monkeypatch: pytest.MonkeyPatch, module) -> dict[str, float]:
    """Wall seconds, seconds to the first commit and the steady pairs/s of ``run()`` (commits timed)."""
    stamps: list[tuple[float, int]] = []
    real = module.commit_chunk

    def commit(wh, plan, result, advance=None):
        real(wh, plan, result, advance)
        stamps.append((time.perf_counter(), len(result.image_ids)))

    monkeypatch.setattr(module, "commit_chunk", commit)
    started = time.perf_counter()
    summary = run()
    wall = time.perf_counter() - started
    monkeypatch.undo()
    first, last = stamps[0][0], stamps[-1][0]
    steady = sum(n for _, n in stamps[1:]) / (last - first) if last > first else float("nan")
    return {"wall_s": round(wall, 2), "first_commit_s": round(first - started, 2),
            "steady_pairs_per_s": round(steady, 3), "pairs": summary.recorded}


@pytest.mark.slow
def test_bench_ingest_local_vs_ray(benchmark, tmp_path_factory, monkeypatch) -> None:
    world = generate_world(tmp_path_factory.mktemp("world") / "w", WorldConfig(seed=3, n_train=0, n_val=0,
                                                                                n_test=12 * IMAGES))

    def config(name: str) -> IngestConfig:
        return IngestConfig(coco_root=str(world), concepts=CONCEPTS, images_per_concept=IMAGES, batch_size=BATCH,
                            device="cpu", warehouse=str(Path(world).parent / name), progress=False)

    local = timed_run(lambda: run_ingest(config("local")), monkeypatch, ingest)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        one = timed_run(lambda: ingest_ray.run_ingest_ray(config("ray1"), ingest_ray.RayOptions(workers=1)),
                        monkeypatch, ingest_ray)
        out: dict[str, dict[str, float]] = {}

        def two_workers() -> None:
            out["two"] = timed_run(lambda: ingest_ray.run_ingest_ray(config("ray2"), ingest_ray.RayOptions(workers=2)),
                                   monkeypatch, ingest_ray)

        benchmark.pedantic(two_workers, rounds=1, iterations=1)
    finally:
        ray.shutdown()
    two = out["two"]
    for name in ("ray1", "ray2"):
        assert_same_tables(Path(world).parent / name, Path(world).parent / "local")
    pairs = local["pairs"]
    info = {"pairs": pairs, "ray_init_s": round(init_s, 1), "local": local, "ray_1_worker": one,
            "ray_2_workers": two, "wall_ratio_ray1_over_local": round(one["wall_s"] / local["wall_s"], 2),
            "wall_ratio_ray2_over_local": round(two["wall_s"] / local["wall_s"], 2),
            "wall_ratio_ray2_over_ray1": round(two["wall_s"] / one["wall_s"], 2),
            "ray1_overhead_s_per_pair": round((one["wall_s"] - local["wall_s"]) / pairs, 3),
            "ray2_overhead_s_per_pair": round((two["wall_s"] - local["wall_s"]) / pairs, 3)}
    benchmark.extra_info.update(info)
    print(json.dumps(info))

