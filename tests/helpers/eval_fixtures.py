"""A tiny world and a warehouse holding one hand-made run of it, for the suppression and baseline tests.

The run has the rows ingest and selection would write (runs, splits, samples, neuron_stats, neuron_sets), built
here through the warehouse writer with deterministic values, so these tests do not depend on ingest.
Concepts are shapes the tiny test tokenizer knows (circle, square, star). Also the helpers the suppression tests
share: `FAST` metrics and `rows_of` / `one` over summary tables.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from kneuron.engine.data.coco import CocoDataset, split_ident_eval
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.warehouse import Warehouse

RUN_ID = "tiny-run"
CONCEPTS = ("circle", "square", "star")
FAST = ("bleu4", "rougeL")  # BERTScore only where a test needs it (model load)
TWO_STAGE_PARAMS = {"aggregate": "mean", "reduce": "max", "stage1": {"kind": "auto"}, "stage2": {"kind": "auto"},
                    "stage2_pool": "candidates"}


@dataclass
class EvalWorld:
    world: Path
    warehouse: Path
    dataset: CocoDataset
    ident: dict[str, list[int]]
    evaluation: dict[str, list[int]]
    two_stage: dict[str, tuple[str, list[tuple[int, int]]]]  # concept -> (set_id, neurons)


def two_stage_neurons(concept: str, n_layers: int, d_ff: int, size: int = 6) -> list[tuple[int, int]]:
    rng = np.random.default_rng(sum(map(ord, concept)))
    flat = rng.choice(n_layers * d_ff, size=size, replace=False)
    return sorted((int(i // d_ff), int(i % d_ff)) for i in flat)


def build_eval_world(tmp: Path, n_layers: int = 3, d_ff: int = 96, model_name: str = "tiny-random-qformer",
                     n_images: int = 30, with_stats: bool = True) -> EvalWorld:
    """World (``n_images`` test images, 32 px) + warehouse with run ``RUN_ID``; sizes match `tiny_minigpt4`."""
    world = generate_world(tmp / "world", WorldConfig(seed=3, image_size=32, n_train=0, n_val=0, n_test=n_images))
    dataset = CocoDataset(world, "test")
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    identity = {"dataset": str(world.resolve()), "split": "test", "dtype": "float32"}
    ident: dict[str, list[int]] = {}
    evaluation: dict[str, list[int]] = {}
    two_stage: dict[str, tuple[str, list[tuple[int, int]]]] = {}
    root = tmp / "warehouse"
    with Warehouse.open(root, create=True) as wh, wh.batch() as batch:
        batch.add("runs", {
            "run_id": [RUN_ID], "created_at": [now], "model_name": [model_name], "model_hash": ["0" * 64],
            "hook_site": ["blocks.{layer}.mlp.down_proj.input"], "prompt": ["describe"], "positions": ["image"],
            "n_positions": [4], "n_layers": [n_layers], "d_ff": [d_ff], "dtype": ["float32"], "inpainter": ["{}"],
            "config_json": [json.dumps({"identity": identity, "config": {"model": model_name}})],
            "kneuron_version": ["test"]})
        for concept in CONCEPTS:
            ids, ev = split_ident_eval(dataset.images_with(concept), 0.5, 0, key=concept)
            ident[concept], evaluation[concept] = ids, ev
            batch.add("splits", {"run_id": [RUN_ID] * (len(ids) + len(ev)), "concept": [concept] * (len(ids) + len(ev)),
                                 "image_id": ids + ev, "split": ["ident"] * len(ids) + ["eval"] * len(ev)})
            batch.add("samples", {"run_id": [RUN_ID] * len(ids), "concept": [concept] * len(ids), "image_id": ids,
                                  "file_name": [dataset.image_path(i).name for i in ids], "status": ["ok"] * len(ids)})
            if with_stats:
                rng = np.random.default_rng(sum(map(ord, concept)))
                n = len(ids) * n_layers * d_ff
                image = np.repeat(np.array(ids, dtype=np.int64), n_layers * d_ff)
                layer = np.tile(np.repeat(np.arange(n_layers), d_ff), len(ids))
                unit = np.tile(np.arange(d_ff), len(ids) * n_layers)
                values = {name: rng.normal(size=n).astype(np.float32)
                          for name in ("o_mean", "i_mean", "d_max", "g_max", "g_mean")}
                batch.add("neuron_stats", {"run_id": [RUN_ID] * n, "concept": [concept] * n, "image_id": image,
                                           "layer": layer, "unit": unit, **values})
            neurons = two_stage_neurons(concept, n_layers, d_ff)
            set_id = f"ts-{concept}"
            two_stage[concept] = (set_id, neurons)
            batch.add("neuron_sets", {
                "set_id": [set_id] * len(neurons), "run_id": [RUN_ID] * len(neurons),
                "concept": [concept] * len(neurons), "method": ["two_stage"] * len(neurons),
                "params_json": [json.dumps(TWO_STAGE_PARAMS)] * len(neurons),
                "layer": [layer for layer, _ in neurons], "unit": [unit for _, unit in neurons],
                "score": [1.0] * len(neurons), "created_at": [now] * len(neurons)})
    return EvalWorld(world, root, dataset, ident, evaluation, two_stage)


def rows_of(summary, **where) -> list[dict]:  # noqa: ANN001
    """The rows of a summary table (`kneuron.engine.eval.summary.SUMMARY_SCHEMA`) whose columns equal ``where``."""
    return [r for r in summary.to_pylist() if all(r[k] == v for k, v in where.items())]


def one(summary, **where) -> dict:  # noqa: ANN001
    """The one row of a summary table matching ``where`` (asserts there is exactly one)."""
    found = rows_of(summary, **where)
    assert len(found) == 1, (where, found)
    return found[0]
