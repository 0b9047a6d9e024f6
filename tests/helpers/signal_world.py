"""A random world of stored neuron signals (neuron_stats + samples) and a real warehouse built from it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

CONCEPTS = ["dog", "it's", "traffic light"]
STAT_COLUMNS = ["o_mean", "i_mean", "d_max", "g_max", "g_mean", "d_mean"]


def make_world(seed: int, n_images: int = 6, n_layers: int = 3, n_units: int = 40,
               missing: float = 0.01) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random neuron_stats and samples for runs r1 (the one selected) and r2 (a decoy).

    Values are heavy-tailed (normal noise plus a few large positive neurons per concept) so that knees exist.
    Image 0 of every concept is 'skipped'; a small share of rows is missing at random.
    """
    rng = np.random.default_rng(seed)
    frames, samples = [], []
    for run in ("r1", "r2"):
        for concept in CONCEPTS:
            layer, unit, image = np.meshgrid(np.arange(n_layers), np.arange(n_units), np.arange(n_images),
                                             indexing="ij")
            n = layer.size
            frame = pd.DataFrame({"run_id": run, "concept": concept, "image_id": image.ravel().astype(np.int64) + 100,
                                  "layer": layer.ravel().astype(np.int16), "unit": unit.ravel().astype(np.int16)})
            hot = rng.random(n_layers * n_units) < 0.08
            for col in STAT_COLUMNS:
                values = rng.standard_normal(n) + np.repeat(hot * rng.exponential(3.0, hot.size), n_images)
                frame[col] = values.astype(np.float32)
            frame = frame[rng.random(n) >= missing]
            frames.append(frame)
            for i in range(n_images):
                samples.append((run, concept, i + 100, "skipped" if i == 0 else "ok"))
    stats = pd.concat(frames, ignore_index=True)
    return stats, pd.DataFrame(samples, columns=["run_id", "concept", "image_id", "status"])


def build_warehouse(root, stats: pd.DataFrame, samples: pd.DataFrame) -> None:
    """A real warehouse at ``root`` holding ``stats`` (float16 on disk) and ``samples``; r1 is the latest run."""
    from kneuron.warehouse import Warehouse

    with Warehouse.open(root, create=True) as wh, wh.batch() as batch:
        for run_id, day in (("r1", 2), ("r2", 1)):
            batch.add("runs", {
                "run_id": [run_id], "created_at": [pd.Timestamp(f"2025-01-0{day}", tz="UTC")],
                "model_name": ["tiny"], "model_hash": ["0"], "hook_site": ["mlp.down_proj.input"],
                "prompt": ["p"], "positions": ["image"], "n_positions": [4], "n_layers": [3], "d_ff": [40],
                "dtype": ["float32"], "inpainter": ["opencv"], "config_json": ["{}"], "kneuron_version": ["0"]})
        batch.add("samples", {
            "run_id": samples.run_id.tolist(), "concept": samples.concept.tolist(),
            "image_id": samples.image_id.to_numpy(), "file_name": [f"{i}.png" for i in samples.image_id],
            "status": samples.status.tolist(), "target_source": ["caption"] * len(samples),
            "skip_reason": [None if s == "ok" else "empty mask" for s in samples.status]})
        batch.add("neuron_stats", pa.Table.from_pandas(
            stats[["run_id", "concept", "image_id", "layer", "unit", "o_mean", "i_mean", "d_max", "g_max",
                   "g_mean"]], preserve_index=False))


