"""The ablation of a suppression evaluation (``EvalConfig.ablation``): its reference images, the recorded
activations (`kneuron.engine.interventions.ablation.record_reference`) and the ``ablation_means`` rows stored with the
evaluation.

Reference images: ``reference_images`` identification images of the evaluated concepts, a seeded choice from
their union (ascending ids), so the same settings always use the same images; their ids enter the eval id.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kneuron.engine.baselines.base import concept_rng
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.interventions.ablation import POSITION_KINDS, Ablation, ActivationReference, record_reference
from kneuron.engine.models.base import VLMAdapter


def reference_image_ids(ident_images: Mapping[str, Sequence[int]], concepts: Sequence[str], n: int,
                        seed: int) -> list[int]:
    """``n`` identification image ids of ``concepts`` (seeded choice from their union; ascending)."""
    pool = sorted({int(i) for c in concepts for i in ident_images.get(c, ())})
    pick = concept_rng(seed, "*", "ablation").permutation(len(pool))[:n]
    return sorted(pool[i] for i in pick)


def prepare_ablation(config: EvalConfig, adapter: VLMAdapter, dataset: Any, ident_images: Mapping[str, Sequence[int]],
                     concepts: Sequence[str], log: Callable[[str], None]) -> tuple[Ablation, dict[str, Any]]:
    """(the `Ablation`, its identity for the eval id: mode, and for mean / resample the reference image ids)."""
    if config.ablation == "zero":
        return Ablation("zero"), {}
    ids = reference_image_ids(ident_images, concepts, config.reference_images, config.seed)
    log(f"{config.ablation} ablation: recording the activations of {len(ids)} reference identification image(s)")
    kwargs = {} if config.max_new_tokens is None else {"max_new_tokens": config.max_new_tokens}
    reference = record_reference(adapter, [dataset.load_image(i) for i in ids], config.batch_size, **kwargs)
    return (Ablation(config.ablation, reference, seed=config.seed),
            {"mode": config.ablation, "reference_images": ids})


def means_rows(eval_id: str, run_id: str, reference: ActivationReference) -> dict[str, Any]:
    """``ablation_means`` rows: every (layer, unit, kind) of the reference means ``[L, 3, d_ff]``."""
    means = reference.means().numpy()  # [L, 3, d_ff]
    n_layers, n_kinds, d_ff = means.shape
    layer, kind, unit = np.meshgrid(np.arange(n_layers), np.arange(n_kinds), np.arange(d_ff), indexing="ij")
    n = means.size
    return {"eval_id": [eval_id] * n, "run_id": [run_id] * n, "layer": layer.reshape(-1).astype(np.int16),
            "unit": unit.reshape(-1).astype(np.int16), "kind": [POSITION_KINDS[k] for k in kind.reshape(-1)],
            "value": means.reshape(-1).astype(np.float32)}


__all__ = ["means_rows", "prepare_ablation", "reference_image_ids"]
