"""Evaluation throughput: ``kneuron suppress --engine local`` vs ``--engine ray`` with 1 and 2 captioners, on
the tiny MiniGPT-4 of the tests, CPU.

The world and run are the suppression tests' (`tests.helpers.eval_fixtures.build_eval_world`: 3 concepts, their
hand-made two_stage sets); each engine evaluates a fresh copy of the same warehouse with the same config
(methods two_stage, random_layer_matched, random; BLEU-4 and ROUGE-L), after one untimed local warm-up run (imports,
metric libraries). One Ray instance (``ray.init``, timed on
its own) serves both Ray runs, as a running cluster would. Per run: wall time, captions made, captions/s over the
wall time, the fixed start cost (Ray: the captioner actors started and their model loaded, from the driver's
"ready in" line; local: the model load) and captions/s after it. All runs must store the same tables.

    pytest benchmarks/test_bench_suppress_ray.py --benchmark-enable -s
    KNEURON_BENCH_SUPPRESS_RAY_IMAGES=30 pytest benchmarks/test_bench_suppress_ray.py --benchmark-enable -s
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from kneuron import warehouse
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.pipelines.ray_cluster import RayOptions
from kneuron.engine.pipelines.suppress import pipeline as suppress
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from kneuron.engine.pipelines.suppress.ray import run_evaluation_ray
from tests.engine.pipelines.suppress.test_ray import KEYS, tables
from tests.helpers.eval_fixtures import FAST, build_eval_world
from tests.helpers.tiny_models import tiny_minigpt4

ray = pytest.importorskip("ray")

IMAGES = int(os.environ.get("KNEURON_BENCH_SUPPRESS_RAY_IMAGES", "60"))
BATCH = 4


def timed_local(config: EvalConfig, root: Path) -> dict:
    loads: list[float] = []
    open_model = suppress.open_model

    def timed_open(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        try:
            return open_model(*args, **kwargs)
        finally:
            loads.append(time.perf_counter() - start)

    suppress.open_model = timed_open  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        run_evaluation(config, root, progress=False)
        wall = time.perf_counter() - start
    finally:
        suppress.open_model = open_model  # type: ignore[assignment]
    return {"wall_s": wall, "start_s": sum(loads)}


def timed_ray(config: EvalConfig, root: Path, workers: int) -> dict:
    lines: list[str] = []
    start = time.perf_counter()
    run_evaluation_ray(config, root, RayOptions(workers=workers), progress=True, log=lines.append)
    wall = time.perf_counter() - start
    ready = [float(m.group(1)) for line in lines if (m := re.search(r"ready in ([0-9.]+) s", line))]
    return {"wall_s": wall, "start_s": ready[0] if ready else float("nan")}


def test_suppress_throughput_local_vs_ray(benchmark, tmp_path: Path) -> None:
    world = build_eval_world(tmp_path, n_images=IMAGES)
    model = tmp_path / "tiny"
    tiny = tiny_minigpt4()
    save_minigpt4(tiny.model, tiny.tokenizer, tiny.spec, model)
    config = EvalConfig(methods=("two_stage", "random_layer_matched", "random"), metrics=FAST, batch_size=BATCH,
                        seed=1, model=str(model), device="cpu")
    roots = {}
    for name in ("warm-up", "local", "ray1", "ray2"):
        roots[name] = tmp_path / name
        shutil.copytree(world.warehouse, roots[name])

    timed_local(config, roots["warm-up"])  # imports, metric libraries, first model load: not counted
    results = {"local": timed_local(config, roots["local"])}
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - start
    try:
        results["ray1"] = timed_ray(config, roots["ray1"], 1)
        results["ray2"] = timed_ray(config, roots["ray2"], 2)
    finally:
        ray.shutdown()
    reference = tables(roots["local"])
    n_captions = reference["captions"].num_rows
    for name in ("ray1", "ray2"):
        got = tables(roots[name])
        assert all(got[t].equals(reference[t]) for t in KEYS), name
    for result in results.values():
        result["captions_per_s"] = round(n_captions / result["wall_s"], 2)
        result["captions_per_s_after_start"] = round(n_captions / (result["wall_s"] - result["start_s"]), 2)
        result["wall_s"], result["start_s"] = round(result["wall_s"], 2), round(result["start_s"], 2)
    info = {"images_per_concept_split": IMAGES, "captions": n_captions, "batch_size": BATCH,
            "ray_init_s": round(ray_init_s, 2), **results}
    benchmark.extra_info.update(info)
    print("\n" + json.dumps(info))
    assert warehouse.Warehouse.open(roots["ray2"]).read("evals").num_rows == 1
