"""Single-stage ablations of the two-stage method, from the selection module: ``stage1_only`` (activation
difference alone) and ``stage2_only`` (GradCAM attribution alone), each the top ``budget`` neurons.

They are the sets ``kneuron select`` writes next to each two-stage set (``queries.selection``): same
aggregation and reduction as the two-stage set they are matched to, budget threshold on one stage, the
other stage off. ``params`` equals the selection module's, so ``set_id`` is the same and a set the selection
already stored is read back instead of recomputed; a set that is missing (e.g. another budget) is computed
here with the same query (``queries/two_stage.sql``) over ``ctx.con``.
"""
from __future__ import annotations

from typing import Any

from engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, register
from engine.errors import KneuronError


def _selection_config(ctx: BaselineContext, concept: str) -> Any:
    """The `SelectionConfig` of the concept's two-stage set (aggregation, reduction, stage-2 pool)."""
    from queries.selection import SelectionConfig

    params = ctx.reference(concept).params
    try:
        return SelectionConfig(run_id=ctx.run_id, concepts=(concept,), aggregate=params["aggregate"],
                               reduce=params["reduce"], min_share=float(params.get("min_share", 0.5)),
                               stage2_pool=params.get("stage2_pool", "candidates"))
    except KeyError as exc:
        raise KneuronError(f"two_stage set {ctx.reference(concept).set_id} has no {exc.args[0]!r} "
                           "in its params_json") from None


class _StageOnly(Baseline):
    stage: int

    def params(self, ctx: BaselineContext, concept: str, budget: int) -> dict[str, Any]:
        return {**_selection_config(ctx, concept).common_params(), "budget": int(budget),
                "budget_of": ctx.reference(concept).set_id}

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        import queries
        from queries.selection import ThresholdSpec, query_params

        if ctx.con is None:
            raise KneuronError(f"baseline {self.name!r} needs a warehouse connection")
        if budget == 0:
            return []
        config = _selection_config(ctx, concept)
        top, off = ThresholdSpec("budget", float(budget)), ThresholdSpec("none")
        stage1, stage2 = (top, off) if self.stage == 1 else (off, top)
        rows = queries.run(ctx.con, "two_stage", query_params(config, ctx.run_id, [concept], stage1, stage2))
        data = rows.to_pydict()
        chosen = [(int(layer), int(unit), None if score is None else float(score))
                  for c, layer, unit, score in zip(data["concept"], data["layer"], data["unit"], data["score"])
                  if c == concept and layer is not None]
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
