"""Random-neuron controls at the same budget as ``N_k``: uniform over all neurons, or with N_k's layer histogram.

Both draw with `concept_rng(seed, concept)`, so a (seed, concept) pair always gives the same set, and exclude
the neurons of the concept's two-stage set by default (the control is "other neurons"; with a 7B model the
overlap would be negligible anyway, with a tiny one it would not). Scores are None.

``per_budget`` (option): the generator also depends on the budget, so the sets of different budgets are
independent draws. Without it one generator per (seed, concept) serves every budget and the sets of nearby
budgets are near-copies of each other (neither nested nor independent); budget evaluations therefore turn it
on (`kneuron.engine.pipelines.suppress.pipeline`), single-budget evaluations keep the sets they always had.

``random_layer_matched``: layer ``l`` gets as many neurons as ``N_k`` has there. For a budget other than
``|N_k|`` the counts are scaled to the budget by the largest-remainder rule (ties: lower layer first); a layer
that cannot hold its count (too few units outside ``N_k``) passes the rest to the layers with the most free
units.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kneuron.engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, check_budget, concept_rng, register
from kneuron.engine.errors import KneuronError


def _model_shape(ctx: BaselineContext, method: str) -> tuple[int, int]:
    if ctx.adapter is None:
        raise KneuronError(f"baseline {method!r} needs the model (its number of layers and units)")
    return ctx.adapter.n_layers, ctx.adapter.d_ff


def _excluded(ctx: BaselineContext, concept: str, exclude: bool, n_layers: int, d_ff: int) -> np.ndarray:
    """``bool [L, d_ff]``: the neurons of the concept's two-stage set (all False when not excluding)."""
    mask = np.zeros((n_layers, d_ff), dtype=bool)
    if exclude and concept in ctx.reference_sets:
        for layer, unit in ctx.reference_sets[concept].neurons:
            mask[int(layer), int(unit)] = True
    return mask


def scale_counts(counts: dict[int, int], budget: int) -> dict[int, int]:
    """Per-layer counts scaled to sum to ``budget`` (largest remainder; ties to the lower layer)."""
    total = sum(counts.values())
    if total == budget:
        return dict(counts)
    if total == 0:
        raise KneuronError("cannot match the layer histogram of an empty neuron set")
    layers = sorted(counts)
    exact = {layer: counts[layer] * budget / total for layer in layers}
    out = {layer: int(np.floor(exact[layer])) for layer in layers}
    left = budget - sum(out.values())
    by_remainder = sorted(layers, key=lambda layer: (-(exact[layer] - out[layer]), layer))
    for layer in by_remainder[:left]:
        out[layer] += 1
    return out


def fit_counts(counts: dict[int, int], free: np.ndarray) -> dict[int, int]:
    """``counts`` capped by ``free[layer]``; the excess goes to the layers with the most room (then lower)."""
    out = {layer: min(count, int(free[layer])) for layer, count in counts.items()}
    excess = sum(counts.values()) - sum(out.values())
    while excess > 0:
        room = [(int(free[layer]) - out.get(layer, 0), layer) for layer in range(len(free))]
        best_room, best = max(room, key=lambda item: (item[0], -item[1]))
        if best_room <= 0:
            raise KneuronError("not enough neurons outside the two-stage set for a layer-matched random set")
        take = min(best_room, excess)
        out[best] = out.get(best, 0) + take
        excess -= take
    return {layer: n for layer, n in sorted(out.items()) if n > 0}


@register
class RandomBaseline(Baseline):
    """``budget`` neurons drawn uniformly from all (layer, unit) pairs outside ``N_k``."""

    name = "random"

    def __init__(self, exclude_reference: bool = True, per_budget: bool = False) -> None:
        self.exclude_reference = bool(exclude_reference)
        self.per_budget = bool(per_budget)

    def options(self) -> dict[str, Any]:
        # per_budget only when on: the sets stored before it existed keep their ids
        return {"exclude_reference": self.exclude_reference, **({"per_budget": True} if self.per_budget else {})}

    def rng(self, ctx: BaselineContext, concept: str, budget: int) -> np.random.Generator:
        """The draw's generator: (seed, concept, method), and the budget with ``per_budget``."""
        return concept_rng(ctx.seed, concept, f"{self.name}@{budget}" if self.per_budget else self.name)

    def params(self, ctx: BaselineContext, concept: str, budget: int) -> dict[str, Any]:
        return {**super().params(ctx, concept, budget), "seed": int(ctx.seed)}

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        n_layers, d_ff = _model_shape(ctx, self.name)
        budget = check_budget(budget, n_layers, d_ff)
        pool = np.flatnonzero(~_excluded(ctx, concept, self.exclude_reference, n_layers, d_ff).reshape(-1))
        if budget > pool.size:
            raise KneuronError(f"random baseline: budget {budget} exceeds the {pool.size} neurons outside N_k")
        chosen = np.sort(self.rng(ctx, concept, budget).choice(pool, size=budget, replace=False))
        return [(int(i // d_ff), int(i % d_ff), None) for i in chosen]


@register
class RandomLayerMatchedBaseline(RandomBaseline):
    """Random neurons with the same per-layer counts as ``N_k`` (scaled to the budget)."""

    name = "random_layer_matched"

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        n_layers, d_ff = _model_shape(ctx, self.name)
        budget = check_budget(budget, n_layers, d_ff)
        if budget == 0:
            return []
        excluded = _excluded(ctx, concept, self.exclude_reference, n_layers, d_ff)
        counts = fit_counts(scale_counts(ctx.reference(concept).layer_counts(), budget),
                            d_ff - excluded.sum(axis=1))
        rng = self.rng(ctx, concept, budget)
        out: list[ScoredNeuron] = []
        for layer, count in counts.items():  # ascending layers: one generator, a fixed draw order
            units = np.sort(rng.choice(np.flatnonzero(~excluded[layer]), size=count, replace=False))
            out.extend((int(layer), int(unit), None) for unit in units)
        return out
