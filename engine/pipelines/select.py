"""The select step: two-stage selection in DuckDB over a run's stored signals, stored as current neuron sets.

    result = select_sets(warehouse_path, SelectionConfig(stage1=ThresholdSpec.parse("auto"), ...))

Runs `kneuron.queries.selection.run_selection` (the SQL of ``queries/two_stage.sql``) on a read-only connection, then,
as the single writer, stores the sets the warehouse does not hold yet and makes every selected set current
(`kneuron.engine.pipelines.sets.store_sets`): rerunning an earlier selection makes its sets current again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from kneuron import queries
from kneuron.engine.pipelines.sets import store_sets
from kneuron.queries.selection import Selection, SelectionConfig, run_selection
from kneuron.warehouse import open_warehouse


@dataclass
class SelectResult:
    """What `select_sets` did: the selection, the set ids written now / found stored, and the current ids."""

    selection: Selection
    written: list[str]
    present: list[str]
    current: list[str]


def select_sets(warehouse_path: str | os.PathLike[str] | None, config: SelectionConfig) -> SelectResult:
    """Select, store and make current the sets of ``config`` (two-stage, plus stage-only baselines if asked).

    Every set of the selection becomes current for its (run, concept, method), empty two-stage sets included
    (they are not stored: an empty set has no rows).
    """
    con = queries.connect(warehouse_path, read_only=True)
    try:
        selection = run_selection(con, config)
    finally:
        con.close()
    stored_ids = sorted(set(selection.neuron_sets.column("set_id").to_pylist()))
    with open_warehouse(warehouse_path, create=True) as wh:
        written, present = store_sets(wh, selection.neuron_sets, make_current=stored_ids)
    return SelectResult(selection, written, present, stored_ids)
