"""Neuron sets in the warehouse: the one row builder, the reader, and which set is *current*.

A stored set is the ``neuron_sets`` rows sharing a ``set_id`` (one row per neuron; built by
`kneuron.queries.selection.set_rows`):

    set_id, run_id, concept, method, params_json, layer, unit, score, created_at

``set_id`` is deterministic (`kneuron.queries.selection.set_id_of`: run, concept, method, params), so a selection that
is already stored is never written twice. The **current** set of a (run, concept, method) is the one most
recently made current: `kneuron select` appends a ``set_choices`` row for every set it selects, stored before
or not, so rerunning an earlier selection makes its sets current again; a set nobody chose (e.g. a baseline the
suppression evaluation made) counts from its ``created_at``. The SQL of that rule is the ``current_sets`` view
(`queries.connect`); every reader goes through it.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from kneuron import queries
from kneuron.engine.baselines import ScoredNeuron
from kneuron.engine.errors import KneuronError
from kneuron.queries.selection import SelectionConfig, ThresholdSpec, query_params
from kneuron.warehouse import Warehouse


@dataclass
class StoredSet:
    """One neuron set as read back: ``neurons`` = ``[(layer, unit, score or None), ...]`` in stored order."""

    set_id: str
    concept: str
    method: str
    params: dict[str, Any]
    created_at: Any
    neurons: list[ScoredNeuron] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(layer, unit) for layer, unit, _ in self.neurons]


def sets_from_rows(table: pa.Table) -> dict[str, StoredSet]:
    """``set_id -> StoredSet`` from ``neuron_sets``-shaped rows (neurons in row order)."""
    out: dict[str, StoredSet] = {}
    for row in table.to_pylist():
        entry = out.get(row["set_id"])
        if entry is None:
            entry = out[row["set_id"]] = StoredSet(row["set_id"], row["concept"], row["method"],
                                                   json.loads(row["params_json"]), row["created_at"])
        entry.neurons.append((int(row["layer"]), int(row["unit"]), row["score"]))
    return out


def stored_sets(con: duckdb.DuckDBPyConnection, run_id: str, set_ids: Sequence[str] = ()) -> dict[str, StoredSet]:
    """``set_id -> StoredSet`` of a run's stored sets (all of them, or just ``set_ids``)."""
    table = queries.run(con, "run_sets", {"run_id": run_id, "set_ids": list(set_ids)})
    return sets_from_rows(table)


def current_set_ids(con: duckdb.DuckDBPyConnection, run_id: str, method: str | None = None
                    ) -> dict[tuple[str, str], str]:
    """``(concept, method) -> set_id`` of the current sets of a run (of one method, or all)."""
    rows = queries.run(con, "current_set_ids", {"run_id": run_id, "method": method}).to_pylist()
    return {(row["concept"], row["method"]): row["set_id"] for row in rows}


def store_sets(warehouse: Warehouse, neuron_sets: pa.Table, make_current: Iterable[str] = ()
               ) -> tuple[list[str], list[str]]:
    """Write the sets of ``neuron_sets`` that the warehouse does not hold yet, in one atomic batch.

    warehouse: an open writer. A set whose ``set_id`` is already committed is the same selection of the same
    run and is left as it is. ``make_current``: set ids (of ``neuron_sets``) that become the current sets of
    their (run, concept, method), whether written now or before (one ``set_choices`` row each, same batch).
    Returns (written set ids, already present set ids), each sorted.
    """
    present = {key[0] for entry in warehouse.committed_files("neuron_sets") for key in entry.keys}
    ids = sorted(set(neuron_sets.column("set_id").to_pylist()))
    new = [set_id for set_id in ids if set_id not in present]
    current = sorted(set(make_current))
    unknown = [set_id for set_id in current if set_id not in ids]
    if unknown:
        raise KneuronError(f"cannot make set(s) {', '.join(unknown)} current: not among the sets being stored")
    if new or current:
        with warehouse.batch() as batch:
            if new:
                mask = pc.is_in(neuron_sets.column("set_id"), value_set=pa.array(new, pa.string()))
                batch.add("neuron_sets", neuron_sets.filter(mask))
            if current:
                batch.add("set_choices", choice_rows(neuron_sets, current))
    return new, [set_id for set_id in ids if set_id in present]


def choice_rows(neuron_sets: pa.Table, set_ids: Sequence[str]) -> dict[str, list[Any]]:
    """One ``set_choices`` row per set id (its run, concept and method read from ``neuron_sets``)."""
    first: dict[str, dict[str, Any]] = {}
    for row in neuron_sets.select(["set_id", "run_id", "concept", "method"]).to_pylist():
        first.setdefault(row["set_id"], row)
    now = dt.datetime.now(dt.timezone.utc)
    rows = [first[set_id] for set_id in set_ids]
    return {"run_id": [r["run_id"] for r in rows], "concept": [r["concept"] for r in rows],
            "method": [r["method"] for r in rows], "set_id": [r["set_id"] for r in rows],
            "chosen_at": [now] * len(rows)}


class StoredStageRanking:
    """`kneuron.engine.baselines.stage.StageRanking` over the stored signals of one run (the two-stage SQL, one stage
    off).

    The selection parameters of a concept come from its two-stage reference set (``reference_params``:
    concept -> that set's params), so a stage-only set uses the same aggregation and reduction.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str,
                 reference_params: Mapping[str, Mapping[str, Any]]) -> None:
        self.con, self.run_id, self.reference_params = con, run_id, reference_params

    def _config(self, concept: str) -> SelectionConfig:
        params = self.reference_params.get(concept)
        if params is None:
            raise KneuronError(f"no two_stage neuron set for concept {concept!r} in run {self.run_id!r}")
        try:
            return SelectionConfig(run_id=self.run_id, concepts=(concept,), aggregate=params["aggregate"],
                                   reduce=params["reduce"], min_share=float(params.get("min_share", 0.5)),
                                   stage2_pool=params.get("stage2_pool", "candidates"))
        except KeyError as exc:
            raise KneuronError(f"the two_stage set of {concept!r} has no {exc.args[0]!r} in its params_json") from None

    def params(self, concept: str) -> dict[str, Any]:
        return self._config(concept).common_params()

    def _excluded(self, config: SelectionConfig) -> list[tuple[int, int]]:
        """Units taken out of every pool (none here)."""
        return []

    def top(self, concept: str, stage: int, budget: int) -> list[ScoredNeuron]:
        config = self._config(concept)
        top, off = ThresholdSpec("budget", float(budget)), ThresholdSpec("none")
        stage1, stage2 = (top, off) if stage == 1 else (off, top)
        params = query_params(config, self.run_id, [concept], stage1, stage2, excluded=self._excluded(config))
        data = queries.run(self.con, "two_stage", params).to_pydict()
        return [(int(layer), int(unit), None if score is None else float(score))
                for c, layer, unit, score in zip(data["concept"], data["layer"], data["unit"], data["score"],
                                                 strict=True)
                if c == concept and layer is not None]
