"""Tiny deterministic rows for every warehouse table (storage tests build warehouses from them)."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RUN = "run-1"


CONCEPTS = ["dog", "traffic light"]


N_LAYERS, D_FF = 2, 5


UTC = dt.timezone.utc


def run_row(run_id: str = RUN) -> dict[str, list]:
    return {
        "run_id": [run_id], "created_at": [dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)],
        "model_name": ["tiny-minigpt4"], "model_hash": ["ab" * 32], "hook_site": ["mlp.down_proj.input"],
        "prompt": ["<Img><ImageHere></Img> Describe it."], "positions": ["image"], "n_positions": [4],
        "n_layers": [N_LAYERS], "d_ff": [D_FF], "dtype": ["float32"], "inpainter": ["opencv-telea"],
        "config_json": ['{"seed": 0}'], "kneuron_version": ["0.1.0"],
    }


def sample_rows(concept: str, image_ids: list[int], run_id: str = RUN, skipped: int | None = None) -> dict:
    n = len(image_ids)
    status = ["skipped" if image_id == skipped else "ok" for image_id in image_ids]
    return {
        "run_id": [run_id] * n, "concept": [concept] * n, "image_id": image_ids,
        "file_name": [f"{i:012d}.jpg" for i in image_ids], "mask_area": [100 + i for i in image_ids],
        "mask_fraction": [0.25] * n, "caption_original": [f"a {concept}"] * n,
        "caption_inpainted": ["a street"] * n, "target_token_id": [42] * n,
        "target_source": ["caption"] * n, "target_position": [3] * n, "status": status,
        "skip_reason": ["empty mask" if s == "skipped" else None for s in status],
    }


def neuron_rows(concept: str, image_id: int, seed: int, run_id: str = RUN) -> dict:
    rng = np.random.default_rng(seed)
    n = N_LAYERS * D_FF
    return {
        "run_id": [run_id] * n, "concept": [concept] * n, "image_id": np.full(n, image_id),
        "layer": np.repeat(np.arange(N_LAYERS), D_FF), "unit": np.tile(np.arange(D_FF), N_LAYERS),
        **{name: rng.standard_normal(n).astype(np.float32) for name in ("o_mean", "i_mean", "d_max", "g_max",
                                                                        "g_mean")},
    }


def all_table_rows() -> dict[str, dict[str, Any]]:
    """A few rows for every table of the schema (one run, two concepts)."""
    rng = np.random.default_rng(7)
    created = dt.datetime(2025, 3, 2, tzinfo=UTC)
    k = 3  # token_stats rows: 1 layer x 1 position x 3 ranks
    return {
        "runs": run_row(),
        "splits": {"run_id": [RUN] * 4, "concept": ["dog", "dog", "traffic light", "traffic light"],
                   "image_id": [11, 12, 21, 22], "split": ["ident", "eval", "ident", "eval"]},
        "samples": sample_rows("traffic light", [21, 23], skipped=23),
        "neuron_stats": neuron_rows("traffic light", 21, seed=1),
        "token_stats": {"run_id": [RUN] * k, "concept": ["dog"] * k, "image_id": [11] * k, "layer": [1] * k,
                        "position": [0] * k, "seq_position": [6] * k, "rank": [0, 1, 2], "unit": [4, 0, 2],
                        "o_act": rng.standard_normal(k), "i_act": rng.standard_normal(k),
                        "g": rng.standard_normal(k)},
        "neuron_sets": {"set_id": ["set-a"] * 2, "run_id": [RUN] * 2, "concept": ["dog"] * 2,
                        "method": ["two_stage"] * 2, "params_json": ['{"a": 0.5}'] * 2, "layer": [0, 1],
                        "unit": [3, 1], "score": [0.5, 0.25], "created_at": [created] * 2},
        "captions": {"eval_id": ["ev-1"] * 2, "run_id": [RUN] * 2, "set_id": [None, "set-a"],
                     "method": ["none", "two_stage"], "concept": ["dog"] * 2, "group": ["target"] * 2,
                     "image_id": [12, 12], "condition": ["unmodified", "suppressed"],
                     "text": ["a dog on grass", "grass"]},
        "scores": {"eval_id": ["ev-1"] * 2, "run_id": [RUN] * 2, "set_id": ["set-a"] * 2,
                   "method": ["two_stage"] * 2, "concept": ["dog"] * 2, "group": ["other"] * 2,
                   "image_id": [12, 12], "metric": ["bleu", "rouge_l"], "reference": ["unmodified",
                                                                                     "ground_truth"],
                   "value": [0.125, 0.5]},
        "evals": {"eval_id": ["ev-1"], "run_id": [RUN], "created_at": [created], "config_json": ["{}"]},
        "set_choices": {"run_id": [RUN] * 2, "concept": ["dog", "traffic light"], "method": ["two_stage"] * 2,
                        "set_id": ["set-a", "set-b"], "chosen_at": [created, created + dt.timedelta(seconds=1)]},
        "neuron_rollup": {"run_id": [RUN] * 2, "concept": ["traffic light"] * 2, "layer": [0, 1], "unit": [4, 4],
                          "n_images": [1, 1], "sum_d_max": [0.5, -1.25], "sum_d_mean": [0.25, 0.0],
                          "sum_g_max": [2.0, 0.125], "sum_g_mean": [1.0, 0.0625]},
        "mentions": {"eval_id": ["ev-1"] * 2, "run_id": [RUN] * 2, "set_id": [None, "set-a"],
                     "method": ["unmodified", "two_stage@2"], "budget": [None, 2], "concept": ["dog"] * 2,
                     "group": ["target"] * 2, "image_id": [12, 12], "condition": ["unmodified", "suppressed"],
                     "object": ["dog"] * 2, "is_concept": [True] * 2, "mentioned": [True, False]},
        "evidence_intervals": {"eval_id": ["ev-1"], "run_id": [RUN], "method": ["two_stage"], "budget": [2],
                               "group": ["target"], "measure": ["mention"], "reference": [""], "estimate": [0.5],
                               "images_low": [0.25], "images_high": [0.75], "concepts_low": [0.0],
                               "concepts_high": [1.0], "n_images": [8], "n_concepts": [2], "n_boot": [100],
                               "seed": [0]},
        "evidence_paired": {"eval_id": ["ev-1"], "run_id": [RUN], "method": ["two_stage"], "baseline": ["random"],
                            "budget": [None], "group": ["other"], "measure": ["bleu4"], "reference": ["unmodified"],
                            "difference": [-0.125], "images_low": [-0.25], "images_high": [0.0],
                            "concepts_low": [-0.5], "concepts_high": [0.25], "p_value": [0.5], "p_holm": [1.0],
                            "n_images": [8], "n_concepts": [2], "n_perm": [100], "seed": [0]},
        "evidence_gaps": {"eval_id": ["ev-1"], "run_id": [RUN], "method": ["pan"], "baseline": [None],
                          "budget": [None], "quantity": ["area"], "estimate": [0.125], "images_low": [0.0],
                          "images_high": [0.25], "concepts_low": [-0.125], "concepts_high": [0.5],
                          "p_value": [None], "p_holm": [None], "n_target_images": [8], "n_other_pairs": [12],
                          "n_concepts": [2], "n_boot": [100], "seed": [0]},
        "ablation_means": {"eval_id": ["ev-1"] * 3, "run_id": [RUN] * 3, "layer": [0, 0, 1], "unit": [3, 3, 1],
                           "kind": ["image", "generated", "prompt"], "value": [0.5, -0.25, 1.0]},
    }


def commit_plan(root: Path, plan: Mapping[str, Sequence[tuple[str, Any]]]) -> dict[str, str]:
    """Commit each entry of ``plan`` (name -> [(table, rows)]) as one batch of a warehouse at ``root``, in order;
    the batch id of each name."""
    from kneuron.warehouse import Warehouse

    ids = {}
    with Warehouse.open(root, create=True) as wh:
        for name, parts in plan.items():
            with wh.batch() as batch:
                for table, data in parts:
                    batch.add(table, data)
            assert batch.record is not None
            ids[name] = batch.record.batch_id
    return ids


def files_of(root: Path, batch_id: str, table: str | None = None) -> list[Path]:
    """Absolute paths of the files of one committed batch (of one table)."""
    from kneuron.warehouse.layout import MANIFEST_DIR

    record = json.loads((root / MANIFEST_DIR / f"{batch_id}.json").read_text())
    return [root / entry["path"] for entry in record["files"] if table in (None, entry["table"])]
