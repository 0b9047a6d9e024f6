"""Single-stage ablations of the two-stage method: ``stage1_only`` (activation difference alone) and
``stage2_only`` (GradCAM attribution alone), each the top ``budget`` neurons of one stage's ranking.

They are the sets `kneuron select` writes next to each two-stage set: same aggregation and reduction as the
two-stage set they are matched to, a budget on one stage, the other stage off. The ranking itself is SQL over
the stored signals, which a baseline does not run: the caller passes a `StageRanking` in the context
(``BaselineContext.stage_ranking``; the suppression pipeline gives one backed by the warehouse). ``params``
equals the selection's, so the ``set_id`` is the same and a set the selection already stored is read back
instead of recomputed.
"""
from __future__ import annotations

from typing import Any, Protocol

from kneuron.engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, register
from kneuron.engine.errors import KneuronError


class StageRanking(Protocol):
    """One stage's ranking of every neuron for a concept, matched to the concept's two-stage set.

    ``params(concept)``: the selection parameters shared by every method (aggregation, reduction, ...), as
    the two-stage set's own ``params`` hold them. ``top(concept, stage, budget)``: the ``budget`` best neurons
    by stage ``stage`` (1 or 2) alone, ``[(layer, unit, score), ...]`` by descending score, then layer, unit.
    """

    def params(self, concept: str) -> dict[str, Any]: ...

    def top(self, concept: str, stage: int, budget: int) -> list[ScoredNeuron]: ...


class _StageOnly(Baseline):
    stage: int

    def _ranking(self, ctx: BaselineContext) -> StageRanking:
        if ctx.stage_ranking is None:
            raise KneuronError(f"baseline {self.name!r} needs the stored stage signals (a warehouse run)")
        ranking: StageRanking = ctx.stage_ranking
        return ranking

    def params(self, ctx: BaselineContext, concept: str, budget: int) -> dict[str, Any]:
        return {**self._ranking(ctx).params(concept), "budget": int(budget),
                "budget_of": ctx.reference(concept).set_id}

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        ranking = self._ranking(ctx)
        if budget == 0:
            return []
        chosen = ranking.top(concept, self.stage, budget)
        return sorted(chosen, key=lambda n: (-(n[2] if n[2] is not None else float("-inf")), n[0], n[1]))


@register
class Stage1OnlyBaseline(_StageOnly):
    """Top ``budget`` neurons by the stage-1 score (activation difference with the object inpainted away)."""

    name = "stage1_only"
    stage = 1


@register
class Stage2OnlyBaseline(_StageOnly):
    """Top ``budget`` neurons by the stage-2 score (GradCAM-style ``g_c``), without stage 1."""

    name = "stage2_only"
    stage = 2
