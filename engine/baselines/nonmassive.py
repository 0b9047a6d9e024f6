"""``random_nonmassive``: a random control that never hits a massive unit.

A "massive activation" unit (activation size an outlier across the identification images; the rule and its
``k`` are in ``queries/massive_units.sql``) can change many captions when zeroed whatever the concept. This
control draws ``budget`` neurons uniformly from the units outside the concept's two-stage set ``N_k`` (as
``random``) *and* outside the run's massive units, so a method that beats it is not just hitting one of those.

The draw is one seeded permutation of that pool per (seed, concept) and the set of budget n is its first n
units: sets of a budget evaluation are nested (budget n inside budget 2n). Scores are None. The massive units
come from the context (``BaselineContext.massive_units``: ``k -> [(layer, unit), ...]``), which the suppression
pipeline backs with the stored signals.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kneuron.engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, check_budget, concept_rng, register
from kneuron.engine.baselines.random import _excluded, _model_shape
from kneuron.engine.errors import KneuronError

#: the default k of the massive-unit rule (the same default as ``queries/massive_units.sql``)
DEFAULT_K = 10.0


def massive_mask(ctx: BaselineContext, k: float, n_layers: int, d_ff: int) -> np.ndarray:
    """``bool [L, d_ff]``: the run's massive units at ``k`` (`KneuronError` without stored signals)."""
    if ctx.massive_units is None:
        raise KneuronError("baseline 'random_nonmassive' needs the run's stored signals (its massive units)")
    mask = np.zeros((n_layers, d_ff), dtype=bool)
    for layer, unit in ctx.massive_units(k):
        if 0 <= int(layer) < n_layers and 0 <= int(unit) < d_ff:
            mask[int(layer), int(unit)] = True
    return mask


@register
class RandomNonMassiveBaseline(Baseline):
    """``budget`` neurons drawn uniformly outside ``N_k`` and outside the run's massive units (nested draws)."""

    name = "random_nonmassive"

    def __init__(self, k: float = DEFAULT_K, exclude_reference: bool = True) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
            raise KneuronError(f"random_nonmassive: k must be a number > 0, got {k!r}")
        self.k = float(k)
        self.exclude_reference = bool(exclude_reference)

    def options(self) -> dict[str, Any]:
        return {"massive_k": self.k, "exclude_reference": self.exclude_reference}

    def params(self, ctx: BaselineContext, concept: str, budget: int) -> dict[str, Any]:
        return {**super().params(ctx, concept, budget), "seed": int(ctx.seed)}

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        n_layers, d_ff = _model_shape(ctx, self.name)
        budget = check_budget(budget, n_layers, d_ff)
        blocked = _excluded(ctx, concept, self.exclude_reference, n_layers, d_ff) | massive_mask(
            ctx, self.k, n_layers, d_ff)
        pool = np.flatnonzero(~blocked.reshape(-1))
        if budget > pool.size:
            raise KneuronError(f"random_nonmassive: budget {budget} exceeds the {pool.size} neurons outside N_k "
                               "and the massive units")
        order = concept_rng(ctx.seed, concept, self.name).permutation(pool)
        chosen = np.sort(order[:budget])
        return [(int(i // d_ff), int(i % d_ff), None) for i in chosen]
