"""``two_stage_specific``: the two-stage ranking restricted to concept-specific neurons (beyond the paper).

At budget n: the n candidates of C_k ∩ S_k with the best stage-2 score, where C_k is the stage-1 candidate set of
the concept's two-stage reference set (its thresholds, aggregation and reduction) and S_k the neurons specific to
k by the rule ``specific`` (``queries/two_stage.sql``, `kneuron.queries.selection.SpecificSpec`):

- ``stage1`` (default): not a stage-1 candidate of any other concept of the run (the selection's own stage-1
  thresholds: no new number);
- ``ratio:R`` / ``ratio1:R``: mean g_c (ratio1: mean Δ) over k's identification images > R x the largest over
  another concept's identification images; R = 1 (k is the neuron's best concept) needs no tuning.

Only identification images enter. When |C_k ∩ S_k| < n the set has what exists (the suppression log says so).
The ranking is SQL over the stored signals, which a baseline does not run: the caller passes it as
``BaselineContext.stage_ranking`` (a `TwoStageRanking`; the suppression pipeline's is backed by the warehouse).
The budget sets of one concept are nested when the aggregation is ``mean`` (the default).
"""
from __future__ import annotations

from typing import Any, Protocol

from kneuron.engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, register
from kneuron.engine.errors import KneuronError


class TwoStageRanking(Protocol):
    """The two-stage ranking of a concept's candidates at a budget, with an optional specificity filter.

    ``two_stage_params(concept, budget, specific)``: the JSON-ready identity of that set (the reference set's
    selection parameters, the budget, the specificity rule). ``two_stage_top(concept, budget, specific)``: its
    neurons ``[(layer, unit, score), ...]`` by descending stage-2 score, then layer, unit.
    """

    def two_stage_params(self, concept: str, budget: int, specific: str | None) -> dict[str, Any]: ...

    def two_stage_top(self, concept: str, budget: int, specific: str | None) -> list[ScoredNeuron]: ...


def two_stage_ranking(ctx: BaselineContext, method: str) -> TwoStageRanking:
    """The context's ranking (`KneuronError` when the caller gave none that ranks two-stage candidates)."""
    ranking = ctx.stage_ranking
    if ranking is None or not hasattr(ranking, "two_stage_top"):
        raise KneuronError(f"baseline {method!r} needs the stored stage signals (a warehouse run)")
    out: TwoStageRanking = ranking
    return out


@register
class TwoStageSpecificBaseline(Baseline):
    """Top-``budget`` two-stage candidates that are specific to the concept (C_k ∩ S_k by stage-2 score)."""

    name = "two_stage_specific"

    def __init__(self, specific: str = "stage1") -> None:
        if not isinstance(specific, str) or not specific.strip():
            raise KneuronError(f"two_stage_specific: specific must be stage1, ratio:R or ratio1:R, got {specific!r}")
        self.specific = specific.strip()

    def params(self, ctx: BaselineContext, concept: str, budget: int) -> dict[str, Any]:
        params = two_stage_ranking(ctx, self.name).two_stage_params(concept, budget, self.specific)
        return {**params, "budget_of": ctx.reference(concept).set_id}

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        if budget == 0:
            return []
        return two_stage_ranking(ctx, self.name).two_stage_top(concept, budget, self.specific)
