"""What the suppression pipeline needs for budget evaluations, specificity and the massive-unit control.

- `BudgetRanking`: the ranking object of the baseline context (``BaselineContext.stage_ranking``). Besides the
  single-stage rankings of `kneuron.engine.pipelines.sets.StoredStageRanking` (stage1_only, stage2_only) it gives the
  two-stage ranking at a budget (`kneuron.engine.baselines.specific.TwoStageRanking`): two_stage at n and
  two_stage_specific at n. Both honour the reference set's ``exclude_massive``.
- `method_labels`: the (method, budget) labels an evaluation runs (`kneuron.engine.eval.budget.label`).
- `massive_lookup`: ``k -> massive units`` of the run (``queries/massive_units.sql``), cached per k.

two_stage at budget n = ``kneuron select --stage2 top:n`` with the reference set's stage 1 (its thresholds,
aggregation, reduction): the n candidates of C_k with the best stage-2 score (ties: lower layer, then unit), so
with aggregation ``mean`` the sets are nested (n inside 2n). With a specificity rule the stage-2 pool is
C_k ∩ S_k (``two_stage.sql``, scope ``pool``). When the pool is smaller than n the set is the whole pool.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import duckdb

from kneuron import queries
from kneuron.engine.baselines import ScoredNeuron
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.budget import label
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.pipelines.sets import StoredStageRanking
from kneuron.queries.selection import SelectionConfig, SpecificSpec, ThresholdSpec, massive_units, query_params


def method_labels(config: EvalConfig) -> list[str]:
    """The evaluation's method labels: ``config.methods``, or every ``"<method>@<n>"`` of ``config.budgets``."""
    if not config.budgets:
        return list(config.methods)
    return [label(method, n) for method in config.methods for n in sorted(config.budgets)]


def massive_lookup(con: duckdb.DuckDBPyConnection, run_id: str) -> Callable[[float], list[tuple[int, int]]]:
    """``k -> [(layer, unit), ...]``: the run's massive units (`kneuron.queries.selection.massive_units`), cached per
    k."""
    cache: dict[float, list[tuple[int, int]]] = {}

    def lookup(k: float) -> list[tuple[int, int]]:
        if float(k) not in cache:
            cache[float(k)] = massive_units(con, run_id, float(k))
        return list(cache[float(k)])

    return lookup


def _threshold(described: Mapping[str, Any] | None) -> ThresholdSpec:
    """The `ThresholdSpec` a set's ``params["stage1"]`` describes (``{"kind": ..., "value": ...}``)."""
    if not described:
        return ThresholdSpec("auto")
    kind = str(described.get("kind", "auto"))
    value = described.get("value")
    return ThresholdSpec(kind) if kind in ("auto", "none") else ThresholdSpec(kind, None if value is None else
                                                                              float(value))



def by_score(neuron: ScoredNeuron) -> tuple[float, int, int]:
    """Sort key: score descending (None last), then layer, unit."""
    return (-(neuron[2] if neuron[2] is not None else float("-inf")), neuron[0], neuron[1])

class BudgetRanking(StoredStageRanking):
    """Single-stage and two-stage rankings of one run, matched to each concept's two-stage reference set.

    reference_params: concept -> the reference set's params (aggregate, reduce, stage1, stage2_pool and, when
    it was selected so, exclude_massive). pool_sizes: filled by `two_stage_top` with (concept, budget, specific)
    -> size of the pool ranked (|C_k| or |C_k ∩ S_k|), so the caller can say when a set is short.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str,
                 reference_params: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__(con, run_id, reference_params)
        self.massive = massive_lookup(con, run_id)
        self.pool_sizes: dict[tuple[str, int, str | None], int] = {}

    def _config(self, concept: str) -> SelectionConfig:
        config = super()._config(concept)
        exclude = self.reference_params[concept].get("exclude_massive")
        return config if exclude is None else dataclasses.replace(config, exclude_massive=float(exclude))

    def _excluded(self, config: SelectionConfig) -> list[tuple[int, int]]:
        return [] if config.exclude_massive is None else self.massive(config.exclude_massive)

    def _neurons(self, params: Mapping[str, Any], concept: str) -> tuple[list[ScoredNeuron], int]:
        """(neurons of ``concept`` by score desc, layer, unit; the pool size n_specific) of one two_stage.sql run."""
        data = queries.run(self.con, "two_stage", params).to_pydict()
        out: list[ScoredNeuron] = []
        pool = 0
        for c, layer, unit, score, n_specific in zip(data["concept"], data["layer"], data["unit"], data["score"],
                                                     data["n_specific"], strict=True):
            if c != concept:
                continue
            pool = int(n_specific or 0)
            if layer is not None:
                out.append((int(layer), int(unit), None if score is None else float(score)))
        return sorted(out, key=by_score), pool

    def top(self, concept: str, stage: int, budget: int) -> list[ScoredNeuron]:
        """The ``budget`` best neurons by stage ``stage`` alone (the parent's, without the excluded units), by score."""
        return sorted(super().top(concept, stage, budget), key=by_score)

    def two_stage_params(self, concept: str, budget: int, specific: str | None) -> dict[str, Any]:
        """The identity of two_stage (``specific`` None) or two_stage_specific at ``budget``: the params
        ``kneuron select --stage2 top:<budget>`` gives the set, plus ``budget`` and ``specific``."""
        reference = self.reference_params.get(concept)
        if reference is None:
            raise KneuronError(f"no two_stage neuron set for concept {concept!r} in run {self.run_id!r}")
        config = self._config(concept)
        params: dict[str, Any] = {**config.common_params(), "stage1": dict(reference.get("stage1") or {"kind": "auto"}),
                                  "stage2": {"kind": "budget", "value": int(budget)},
                                  "stage2_pool": reference.get("stage2_pool", "candidates"), "budget": int(budget)}
        if specific is not None:
            params["specific"] = SpecificSpec.parse(specific).describe()
        return params

    def two_stage_top(self, concept: str, budget: int, specific: str | None) -> list[ScoredNeuron]:
        """The ``budget`` best stage-2 candidates of C_k (∩ S_k with ``specific``), by score, layer, unit."""
        config = self._config(concept)
        spec = None if specific is None else SpecificSpec.parse(specific)
        stage1 = _threshold(self.reference_params[concept].get("stage1"))
        params = query_params(config, self.run_id, [concept], stage1, ThresholdSpec("budget", float(budget)),
                              spec, "pool", self._excluded(config))
        neurons, pool = self._neurons(params, concept)
        self.pool_sizes[(concept, int(budget), specific)] = pool
        return neurons


def short_note(method: str, concept: str, budget: int, got: int, pool: int | None) -> str:
    """The log line of a set smaller than its budget."""
    where = "" if pool is None else f" (its pool holds {pool})"
    return (f"{label(method, budget)} for {concept!r}: {got} neuron(s) instead of {budget}{where}; "
            "the set is what exists")


__all__ = ["BudgetRanking", "massive_lookup", "method_labels", "short_note"]
