"""The demo's ingest and suppress steps on a busy machine: how much slower next to two CPU-burning processes than
alone, against the fair share of the CPU, with kneuron's thread policy (`kneuron.engine.runtime.threads`) and without
it.

Definitions (all measured in one run of this file, so the ratios compare like with like):

- ``alone``: wall time of the step with nothing else of ours running; ``loaded``: the same step while
  ``BURNERS`` processes (a pure-Python busy loop each, one thread) run; both started and stopped here.
- ``slowdown = loaded / alone``.
- ``fair = (BURNERS + C) / C`` with ``C`` the CPUs this process may use: the slowdown of a job that keeps all C
  cores busy when the scheduler gives every runnable thread an equal share (the job as C threads next to
  BURNERS threads). With 2 burners on 2 cores, fair = 2.0. A single-threaded job could do better (1.5 there).
- ``ratio_to_fair = slowdown / fair``: 1.0 is a fair share; the goal is <= 1.5 (``benchmark.extra_info``;
  reported, not asserted). Before the policy, the suppress step reached ~9x of fair (28x slower).

Each timing is one ``kneuron`` command in a fresh process (so that the OpenMP waiting policy is set before
torch loads, as in real use); the process imports torch, transformers, nnsight and the step's modules before
the clock starts, so start-up is not timed. ``policy="kneuron"`` runs the command as users do;
``policy="before"`` reproduces the old behaviour: ``--threads C`` for everything (no one-thread jobs for small
models) and the OpenMP / tokenizers runtime defaults (the variables set empty, so kneuron leaves them alone).

Workload: the bundled tiny-shapes-qformer on a 96-image test split of the embedded world, 2 concepts;
ingest 8 identification images per concept; suppress: every default method (two_stage, random,
random_layer_matched, stage1_only, stage2_only, Pan, Dai) on up to 8 target images per concept.

    pytest benchmarks/test_bench_contention.py --benchmark-enable -s
    KNEURON_BENCH_POLICIES=kneuron pytest ...   # only the policy (the "before" runs are slow under load)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kneuron.engine.runtime.threads import WAIT_ENV, available_cpus

ROOT = Path(__file__).resolve().parents[1]
BURNERS = 2
CONCEPTS = ("circle", "square")
POLICIES = tuple(os.environ.get("KNEURON_BENCH_POLICIES", "kneuron,before").split(","))

#: runs one kneuron command in this fresh process, the clock started after the heavy imports
RUNNER = """
import json, os, sys, time
if os.environ.get("BENCH_POLICY") == "kneuron":
    from kneuron.engine.runtime.threads import prepare_environment
    prepare_environment()
import torch, transformers, nnsight  # noqa: F401  (start-up is not what is measured)
import kneuron.engine.pipelines.ingest.pipeline
import kneuron.engine.pipelines.suppress.pipeline
import kneuron.engine.baselines
import kneuron.engine.eval.metrics
from kneuron.cli.main import main
started = time.perf_counter()
main(sys.argv[1:])
print(json.dumps({"seconds": time.perf_counter() - started, "threads": torch.get_num_threads()}))
"""


def kneuron(args: list[str], policy: str, timeout: float = 3600) -> float:
    """Seconds the command ``kneuron ARGS`` took (clock inside the process, after the imports)."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_ENV and k != "OMP_NUM_THREADS"}
    env["BENCH_POLICY"] = policy
    if policy == "before":
        env.update({name: "" for name in WAIT_ENV})  # runtime defaults; kneuron does not touch a set variable
        args = ["--threads", str(available_cpus()), *args]
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


@contextmanager
def burners(n: int = BURNERS) -> Iterator[None]:
    """``n`` CPU-burning processes (a pure-Python busy loop each) while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.5)
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 96-image test split and a warehouse with the ingested and selected run (the suppress step's input)."""
    from kneuron.engine.data.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("contention")
    world = generate_world(root / "world", WorldConfig(n_train=0, n_val=0, n_test=96), splits=("test",))
    warehouse = root / "selected"
    kneuron(ingest_args(world, warehouse), "kneuron")
    kneuron(["select", "--warehouse", str(warehouse)], "kneuron")
    return {"root": root, "world": world, "selected": warehouse}


def ingest_args(world: Path, warehouse: Path) -> list[str]:
    concepts = [a for c in CONCEPTS for a in ("--concept", c)]
    return ["ingest", "--coco-root", str(world), *concepts, "--images-per-concept", "8", "--warehouse",
            str(warehouse), "--device", "cpu", "--no-progress"]


def step_args(step: str, prepared: dict[str, Path], tag: str) -> list[str]:
    """The command of ``step`` on a fresh copy of its input (a rerun would resume, not recompute)."""
    target = prepared["root"] / f"{step}-{tag}"
    shutil.rmtree(target, ignore_errors=True)
    if step == "ingest":
        return ingest_args(prepared["world"], target)
    shutil.copytree(prepared["selected"], target)
    concepts = [a for c in CONCEPTS for a in ("--concept", c)]
    return ["suppress", "--warehouse", str(target), *concepts, "--images-per-concept", "8", "--device", "cpu",
            "--no-progress"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("step", ["suppress", "ingest"])
def test_slowdown_next_to_cpu_burners(benchmark, prepared: dict[str, Path], step: str, policy: str) -> None:  # noqa: ANN001
    cpus = available_cpus()
    times: dict[str, float] = {}

    def run_both() -> None:
        times["alone"] = kneuron(step_args(step, prepared, f"{policy}-alone"), policy)
        with burners():
            times["loaded"] = kneuron(step_args(step, prepared, f"{policy}-loaded"), policy)

    benchmark.pedantic(run_both, rounds=1, iterations=1)
    slowdown = times["loaded"] / times["alone"]
    fair = (BURNERS + cpus) / cpus
    info = {"step": step, "policy": policy, "cpus": cpus, "burners": BURNERS, "alone_s": times["alone"],
            "loaded_s": times["loaded"], "slowdown": slowdown, "fair_slowdown": fair,
            "ratio_to_fair": slowdown / fair, "target_ratio_to_fair": 1.5,
            "load_before": os.getloadavg()[0]}
    benchmark.extra_info.update(info)
    print(f"\n[{step}, policy {policy}] alone {times['alone']:.1f} s, next to {BURNERS} burners on {cpus} CPUs "
          f"{times['loaded']:.1f} s: slowdown {slowdown:.2f}x, fair {fair:.2f}x, ratio to fair "
          f"{slowdown / fair:.2f} (goal <= 1.5)")
