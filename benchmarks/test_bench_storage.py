"""Bytes the warehouse stores per (concept, image) at MiniGPT-4-7B shape, and the time to write them.

Shape: L = 32 layers, d_ff = 11008 units, P = 32 image-token positions. Random O'_original, O'_inpainted and
g_c tensors ``[P, L, d_ff]`` are reduced with numpy to the ``neuron_stats`` columns (one row per layer and unit)
and to top-k (k = 16 by g_c, per layer and position) ``token_stats`` rows, and written with one ``samples``
row through the real writer as one batch. Our budget: at most 4 MB per pair, against 22.5 MB
for dense fp16 O'. The floor is the raw bytes of the five float16 values per neuron (3.52 MB), the id
columns being nearly free.

    pytest benchmarks/test_bench_storage.py                       # runs once, checks the size budget
    pytest benchmarks/test_bench_storage.py --benchmark-enable    # also times the write
"""
from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa

from kneuron.warehouse import Warehouse
from kneuron.warehouse.layout import manifest_path
from kneuron.warehouse.manifest import BatchRecord

N_LAYERS, D_FF, N_POSITIONS, TOP_K = 32, 11008, 32, 16
FIRST_IMAGE_TOKEN = 5  # sequence index of the first image token (only used as a stored value)
BUDGET_BYTES = 4 * 1024 * 1024
DENSE_FP16_BYTES = N_POSITIONS * N_LAYERS * D_FF * 2  # one dense O' per image: 22.5 MB
VALUE_FLOOR_BYTES = 5 * N_LAYERS * D_FF * 2  # five float16 values per neuron
RUN_ID = "bench-7b"
CONCEPT = "traffic light"


def _signals(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random O'_original, O'_inpainted, g_c, each ``[P, L, d_ff]`` float32 (LLaMA-like heavy-tailed O')."""
    rng = np.random.default_rng(seed)
    shape = (N_POSITIONS, N_LAYERS, D_FF)
    o_original = rng.standard_normal(shape, dtype=np.float32) * rng.standard_normal(shape, dtype=np.float32)
    o_inpainted = o_original + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    g = o_original * (1e-3 * rng.standard_normal(shape, dtype=np.float32))
    return o_original, o_inpainted, g


def _neuron_stats(o_original: np.ndarray, o_inpainted: np.ndarray, g: np.ndarray, image_id: int) -> pa.Table:
    """Reductions over P of ``[P, L, d_ff]`` signals: one row per (layer, unit), sorted by (layer, unit)."""
    n = N_LAYERS * D_FF
    return pa.table({
        "run_id": pa.array([RUN_ID] * n).dictionary_encode().cast(pa.string()),
        "concept": pa.array([CONCEPT] * n),
        "image_id": np.full(n, image_id, dtype=np.int64),
        "layer": np.repeat(np.arange(N_LAYERS, dtype=np.int16), D_FF),
        "unit": np.tile(np.arange(D_FF, dtype=np.int16), N_LAYERS),
        "o_mean": o_original.mean(axis=0).astype(np.float16).ravel(),
        "i_mean": o_inpainted.mean(axis=0).astype(np.float16).ravel(),
        "d_max": (o_original - o_inpainted).max(axis=0).astype(np.float16).ravel(),
        "g_max": g.max(axis=0).astype(np.float16).ravel(),
        "g_mean": g.mean(axis=0).astype(np.float16).ravel(),
    })


def _token_stats(o_original: np.ndarray, o_inpainted: np.ndarray, g: np.ndarray, image_id: int) -> pa.Table:
    """Top-k units by g_c per (layer, position): rows ordered (layer, position, rank)."""
    g_lp = g.transpose(1, 0, 2)  # [L, P, d_ff]
    top = np.argpartition(-g_lp, TOP_K, axis=-1)[..., :TOP_K]
    order = np.argsort(-np.take_along_axis(g_lp, top, axis=-1), axis=-1, kind="stable")
    units = np.take_along_axis(top, order, axis=-1)  # [L, P, k], best first

    def gather(x: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x.transpose(1, 0, 2), units, axis=-1).astype(np.float16).ravel()

    n = N_LAYERS * N_POSITIONS * TOP_K
    layer, position, rank = (a.ravel() for a in np.meshgrid(
        np.arange(N_LAYERS), np.arange(N_POSITIONS), np.arange(TOP_K), indexing="ij"))
    return pa.table({
        "run_id": [RUN_ID] * n,
        "concept": [CONCEPT] * n,
        "image_id": np.full(n, image_id, dtype=np.int64),
        "layer": layer.astype(np.int16),
        "position": position.astype(np.int16),
        "seq_position": (position + FIRST_IMAGE_TOKEN).astype(np.int16),
        "rank": rank.astype(np.int8),
        "unit": units.ravel().astype(np.int16),
        "o_act": gather(o_original),
        "i_act": gather(o_inpainted),
        "g": gather(g),
    })


def _sample(image_id: int) -> dict[str, list]:
    return {
        "run_id": [RUN_ID], "concept": [CONCEPT], "image_id": [image_id],
        "file_name": [f"{image_id:012d}.jpg"], "mask_area": [12345], "mask_fraction": [0.04],
        "caption_original": ["a traffic light over a busy street"], "caption_inpainted": ["a busy street"],
        "target_token_id": [12314], "target_source": ["caption"], "target_position": [7],
        "status": ["ok"], "skip_reason": [None],
    }


def _run_row() -> dict[str, list]:
    return {
        "run_id": [RUN_ID], "created_at": [dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)],
        "model_name": ["minigpt4-vicuna-7b"], "model_hash": ["0" * 64], "hook_site": ["mlp.down_proj.input"],
        "prompt": ["<Img><ImageHere></Img> Describe this image."], "positions": ["image"],
        "n_positions": [N_POSITIONS], "n_layers": [N_LAYERS], "d_ff": [D_FF], "dtype": ["float16"],
        "inpainter": ["opencv-telea"], "config_json": ["{}"], "kneuron_version": ["0.1.0"],
    }


def test_bytes_per_concept_image_pair(benchmark, tmp_path: Path) -> None:
    o_original, o_inpainted, g = _signals(seed=0)
    neuron_stats = _neuron_stats(o_original, o_inpainted, g, image_id=0)
    token_stats = _token_stats(o_original, o_inpainted, g, image_id=0)
    del o_original, o_inpainted, g
    image_ids = itertools.count(1)
    records: list[BatchRecord] = []

    with Warehouse.open(tmp_path / "wh", create=True) as wh:
        with wh.batch() as batch:
            batch.add("runs", _run_row())

        def write_one_pair() -> None:
            image_id = next(image_ids)  # every round is a new (concept, image): samples rows are unique
            with wh.batch() as b:
                b.add("samples", _sample(image_id))
                b.add("neuron_stats", neuron_stats.set_column(2, "image_id", pa.array(
                    np.full(neuron_stats.num_rows, image_id, dtype=np.int64))))
                b.add("token_stats", token_stats.set_column(2, "image_id", pa.array(
                    np.full(token_stats.num_rows, image_id, dtype=np.int64))))
            records.append(b.record)

        benchmark(write_one_pair)
        assert records and wh.finished_pairs(RUN_ID) == {(CONCEPT, i) for i in range(1, len(records) + 1)}

    record = records[0]
    by_table = {entry.table: entry.bytes for entry in record.files}
    manifest_bytes = manifest_path(tmp_path / "wh", record.batch_id).stat().st_size
    bytes_per_pair = sum(by_table.values()) + manifest_bytes
    benchmark.extra_info.update({
        "bytes_per_pair": bytes_per_pair,
        "neuron_stats_bytes": by_table["neuron_stats"],
        "token_stats_bytes": by_table["token_stats"],
        "samples_bytes": by_table["samples"],
        "manifest_bytes": manifest_bytes,
        "dense_fp16_bytes": DENSE_FP16_BYTES,
        "ratio_dense_over_stored": round(DENSE_FP16_BYTES / bytes_per_pair, 2),
        "ratio_stored_over_value_floor": round(bytes_per_pair / VALUE_FLOOR_BYTES, 3),
    })
    print(f"\nwarehouse bytes per (concept, image): {bytes_per_pair:,} "
          f"(neuron_stats {by_table['neuron_stats']:,}, token_stats {by_table['token_stats']:,}, "
          f"samples {by_table['samples']:,}, manifest {manifest_bytes:,}); "
          f"dense fp16 O' {DENSE_FP16_BYTES:,} = {DENSE_FP16_BYTES / bytes_per_pair:.2f}x; "
          f"value floor {VALUE_FLOOR_BYTES:,} = {bytes_per_pair / VALUE_FLOOR_BYTES:.3f}x")
    assert bytes_per_pair <= BUDGET_BYTES, f"{bytes_per_pair:,} bytes per pair exceeds the 4 MB design budget"
