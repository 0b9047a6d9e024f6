"""``kneuron demo`` end to end on this machine: wall time per step, and the same tables whatever the thread
settings.

Two runs of the whole demo in fresh folders (world, warehouse, report), one after the other in this test:

- ``kneuron``: the demo as users run it (the thread policy of `kneuron.engine.runtime.threads`);
- ``before``: ``kneuron --threads C demo`` with the OpenMP / tokenizers variables left at the runtimes' defaults
  (C = the CPUs this process may use): the thread settings kneuron had before the policy.

``benchmark.extra_info``: each run's wall seconds and step seconds (from the demo's ``== step (+Ns)`` lines),
``ratio_kneuron_over_before`` (the policy on an idle machine; the issue's goal for the demo is <= 60 s on 2 idle
cores, from 100 s), the load average before each run (read the times as idle only when it was < 1.5), and
whether the two runs stored the same tables: the same neuron sets (concept, method, layer, unit) and captions,
and every score within ``TOLERANCE`` (asserted).

    pytest benchmarks/test_bench_demo.py --benchmark-enable -s
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kneuron.engine.runtime.threads import WAIT_ENV, available_cpus

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6
KNEURON = [sys.executable, "-c", "from kneuron.cli.main import main; main()"]


def run_demo(folder: Path, policy: str) -> dict[str, float]:
    """Run the demo into ``folder``; its wall time and per-step seconds."""
    folder.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in WAIT_ENV and k != "OMP_NUM_THREADS"}
    env["KNEURON_WORLD"] = str(folder / "world")
    args = ["demo", "--warehouse", str(folder / "warehouse"), "--out", str(folder / "report"), "--no-progress"]
    if policy == "before":
        env.update({name: "" for name in WAIT_ENV})
        args = ["--threads", str(available_cpus()), *args]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run([*KNEURON, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    marks = [(name.split(":")[0], float(at)) for name, at in re.findall(r"^== (.+?)  \(\+(\d+)s\)$", done.stdout,
                                                                           re.MULTILINE)]
    steps = {name: (marks[i + 1][1] if i + 1 < len(marks) else seconds) - at for i, (name, at) in enumerate(marks)}
    return {"seconds": seconds, "load_before": load, **{f"{k}_s": v for k, v in steps.items()}}


def tables(warehouse: Path) -> dict[str, list[tuple]]:
    """The demo's results, without ids and times: neuron sets, captions and scores, sorted."""
    from kneuron import queries

    with queries.connect(warehouse) as con:
        sets = con.execute("SELECT concept, method, layer, unit FROM neuron_sets ORDER BY ALL").fetchall()
        captions = con.execute('SELECT method, concept, "group", image_id, condition, text FROM captions '
                               "ORDER BY ALL").fetchall()
        scores = con.execute('SELECT method, concept, "group", image_id, metric, reference, value FROM scores '
                             "ORDER BY ALL").fetchall()
    return {"sets": sets, "captions": captions, "scores": scores}


@pytest.mark.slow
def test_demo_wall_time_and_same_tables(benchmark, tmp_path: Path) -> None:  # noqa: ANN001
    results: dict[str, dict[str, float]] = {}

    def both() -> None:
        results["kneuron"] = run_demo(tmp_path / "kneuron", "kneuron")
        results["before"] = run_demo(tmp_path / "before", "before")

    benchmark.pedantic(both, rounds=1, iterations=1)
    ours, before = tables(tmp_path / "kneuron" / "warehouse"), tables(tmp_path / "before" / "warehouse")
    assert ours["sets"] == before["sets"] and ours["captions"] == before["captions"]
    assert len(ours["scores"]) == len(before["scores"])
    worst = max((abs(a[-1] - b[-1]) for a, b in zip(ours["scores"], before["scores"], strict=True) if a[:-1] == b[:-1]),
                default=0.0)
    assert all(a[:-1] == b[:-1] for a, b in zip(ours["scores"], before["scores"], strict=True)) and worst <= TOLERANCE
    info = {**{f"kneuron_{k}": v for k, v in results["kneuron"].items()},
            **{f"before_{k}": v for k, v in results["before"].items()},
            "ratio_kneuron_over_before": results["kneuron"]["seconds"] / results["before"]["seconds"],
            "goal_s": 60.0, "cpus": available_cpus(), "same_sets_and_captions": True, "max_score_difference": worst,
            "neuron_sets": len(ours["sets"]), "captions": len(ours["captions"])}
    benchmark.extra_info.update(info)
    ours_run = results["kneuron"]
    print(f"\n[demo] kneuron {ours_run['seconds']:.1f} s (load before {ours_run['load_before']:.2f}); "
          f"before-policy {results['before']['seconds']:.1f} s (load {results['before']['load_before']:.2f}); "
          f"steps: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in results["kneuron"].items()
                                 if k.endswith("_s")) + f"; same tables (max score difference {worst:.1e})")
