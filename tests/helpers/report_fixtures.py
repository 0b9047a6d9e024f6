"""A tiny world, a tiny model and a warehouse holding one hand-made run of them, for the report, the run reader
and the neuron CLIs (decode, heatmap, caption).

The run (``tiny-run``) has runs, splits and neuron_sets rows (and, with scores, two suppression evaluations of
circle/two_stage as the suppress pipeline stores them); no ingest is needed.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kneuron.engine.data.coco import CocoDataset, split_ident_eval
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from tests.helpers.hf_tiny import tiny_adapter

RUN = "tiny-run"
CONCEPTS = ("circle", "square")
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
SETS = {  # (concept, method) -> [(layer, unit, score)]; set id f"{concept}-{method}", stored at T0
    ("circle", "two_stage"): [(2, 5, 0.9), (1, 7, 0.5), (2, 11, 0.3)],
    ("circle", "stage1_only"): [(0, 3, 1.0), (2, 5, 0.8), (1, 2, 0.1)],
    ("square", "two_stage"): [(2, 5, 0.7), (0, 40, 0.6)],
    ("square", "stage1_only"): [(1, 9, 0.4), (0, 40, 0.2)],
}
#: the random baselines (as `kneuron suppress` stores them: no score, the two_stage set's size)
RANDOM_SETS = {
    ("circle", "random"): [(0, 17, None), (1, 60, None), (2, 90, None)],
    ("square", "random"): [(1, 33, None), (2, 1, None)],
}
#: an older circle two_stage set (stored a day before the others, so not current unless chosen)
OLD_SET_ID = "circle-two_stage-old"
OLD_SET = [(0, 1, 0.5), (0, 2, 0.4)]


def make_world(folder: Path) -> Path:
    return generate_world(folder / "w", WorldConfig(n_train=0, n_val=0, n_test=16))


def make_model(folder: Path) -> Path:
    adapter = tiny_adapter("minigpt4-qformer")
    return save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, folder / "m")


def splits_of(world: Path) -> dict[str, tuple[list[int], list[int]]]:
    data = CocoDataset(world, "test")
    return {c: split_ident_eval(data.images_with(c), 0.5, 0, key=c) for c in CONCEPTS}


def set_rows(sets: dict[tuple[str, str], list], set_id: dict[tuple[str, str], str] | None = None,
             created_at: datetime = T0) -> dict[str, list]:
    rows: dict[str, list] = {k: [] for k in ("set_id", "run_id", "concept", "method", "params_json", "layer",
                                             "unit", "score", "created_at")}
    for (concept, method), members in sets.items():
        params = {"resolved": {"n_images": 4, "n_candidates": 10, "threshold_a": 0.1, "threshold_g": 0.2}}
        name = (set_id or {}).get((concept, method), f"{concept}-{method}")
        for layer, unit, score in members:
            for key, value in zip(rows, (name, RUN, concept, method, json.dumps(params), layer, unit, score,
                                         created_at), strict=True):
                rows[key].append(value)
    return rows


def build(root: Path, world: Path, model_dir: Path, with_scores: bool, with_random: bool = False) -> Path:
    from kneuron import warehouse
    from kneuron.engine.models import load_model
    from kneuron.engine.models.fingerprint import model_fingerprint

    fingerprint = model_fingerprint(load_model(str(model_dir)))
    config = {"identity": {"dataset": str(world), "split": "test"},
              "config": {"model": str(model_dir), "inpainter": "telea", "inpaint_radius": 3.0, "margin_px": 1.0}}
    with warehouse.Warehouse.open(root, create=True) as wh, wh.batch() as batch:
        batch.add("runs", {
            "run_id": [RUN], "created_at": [T0], "model_name": [str(model_dir)], "model_hash": [fingerprint],
            "hook_site": ["blocks.{layer}.mlp.down_proj.input"], "prompt": ["<Img><ImageHere></Img> Describe."],
            "positions": ["image"], "n_positions": [4], "n_layers": [3], "d_ff": [96], "dtype": ["float32"],
            "inpainter": ['{"name": "telea"}'], "config_json": [json.dumps(config)], "kneuron_version": ["test"]})
        rows: dict[str, list] = {k: [] for k in ("run_id", "concept", "image_id", "split")}
        for concept, (ident, evaluation) in splits_of(world).items():
            for image_id, split in [(i, "ident") for i in ident] + [(i, "eval") for i in evaluation]:
                for key, value in zip(rows, (RUN, concept, image_id, split), strict=True):
                    rows[key].append(value)
        batch.add("splits", rows)
        sets = set_rows({**SETS, **(RANDOM_SETS if with_random else {})})
        old = set_rows({("circle", "two_stage"): OLD_SET}, {("circle", "two_stage"): OLD_SET_ID}, T0 - timedelta(1))
        batch.add("neuron_sets", {key: values + old[key] for key, values in sets.items()})
        if with_scores:
            add_scores(batch, world)
    return root


def evaluation_images(world: Path) -> tuple[list[int], list[int]]:
    """Two circle images (target) and two images without a circle (other) of the world's test split."""
    data = CocoDataset(world, "test")
    circles = data.images_with("circle")
    others = [i for i in data.image_ids() if i not in circles]
    return circles[:2], others[:2]


def add_scores(batch, world: Path) -> None:  # noqa: ANN001
    """Two evaluations of circle/two_stage, stored as the suppress pipeline stores them (method 'unmodified' for
    the unmodified captions and their scores); the older one's numbers must not count."""
    target, other = evaluation_images(world)
    scores: dict[str, list] = {k: [] for k in ("eval_id", "run_id", "set_id", "method", "concept", "group",
                                               "image_id", "metric", "reference", "value")}
    captions: dict[str, list] = {k: [] for k in ("eval_id", "run_id", "set_id", "method", "concept", "group",
                                                 "image_id", "condition", "text")}
    after = {("old", "target"): [0.9, 0.9], ("new", "target"): [0.2, 0.4], ("old", "other"): [0.1, 0.1],
             ("new", "other"): [0.8, 1.0]}
    texts = {"target": [("a red circle and a blue star", "a blue star"), ("a green circle", "a green circle")],
             "other": [("a red square above a star", "a red square above a circle"), ("a blue star", "a blue")]}
    for (eval_id, group), values in after.items():
        for image_id, value, (before_text, after_text) in zip(target if group == "target" else other, values,
                                                              texts[group], strict=True):
            for method, set_id, condition, text, score in (
                    ("unmodified", None, "unmodified", before_text, 1.0),
                    ("two_stage", "circle-two_stage", "suppressed", after_text, value)):
                row = (eval_id, RUN, set_id, method, "circle", group, image_id, condition,
                       text if eval_id == "new" else "circle")
                for key, v in zip(captions, row, strict=True):
                    captions[key].append(v)
                for metric in ("bleu4", "rougeL"):
                    for key, v in zip(scores, (eval_id, RUN, set_id, method, "circle", group, image_id, metric,
                                               "unmodified", score), strict=True):
                        scores[key].append(v)
    batch.add("scores", scores)
    batch.add("captions", captions)
    batch.add("evals", {"eval_id": ["old", "new"], "run_id": [RUN, RUN], "created_at": [T0, T0 + timedelta(1)],
                        "config_json": ["{}", "{}"]})


def choose(root: Path, set_id: str) -> None:
    """Make the stored set ``set_id`` current (one ``set_choices`` row), as `kneuron select` does."""
    from kneuron import queries, warehouse
    from kneuron.engine.pipelines.sets import store_sets

    con = queries.connect(root)
    try:
        rows = con.sql("SELECT * FROM neuron_sets WHERE set_id = $set_id", params={"set_id": set_id}).to_arrow_table()
    finally:
        con.close()
    with warehouse.Warehouse.open(root, create=True) as wh:
        store_sets(wh, rows, make_current=[set_id])


def section_html(text: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', text, re.DOTALL)
    assert match, f"no section {section_id}"
    return match.group(1)
