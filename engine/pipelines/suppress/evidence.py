"""The evidence of a finished suppression evaluation, stored once: per-(caption, object) mention outcomes and the
intervals and paired tests of `kneuron.engine.eval.evidence`, in the ``mentions`` and ``evidence_*`` tables.

Part of `kneuron.engine.pipelines.suppress.pipeline` (``run_evaluation`` calls `summarize_and_store` when all captions
are in).
An evaluation whose evidence is already stored (a finished evaluation run again) is not written twice.
`kneuron.engine.eval.evidence.evidence_tables` computes the same tables from the outcomes of any stored evaluation (the
report uses it for evaluations stored before these tables existed).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from kneuron import queries
from kneuron.engine.eval.evidence import Evidence, evidence_tables
from kneuron.engine.eval.mention_table import mention_rows
from kneuron.engine.pipelines.run import load_evaluation, stored_evidence
from kneuron.engine.pipelines.sets import StoredSet
from kneuron.warehouse import Warehouse


def _with_ids(table: pa.Table, eval_id: str, run_id: str) -> pa.Table:
    n = table.num_rows
    return table.add_column(0, "run_id", pa.array([run_id] * n, pa.string())).add_column(
        0, "eval_id", pa.array([eval_id] * n, pa.string()))


def summarize_and_store(wh: Warehouse, eval_id: str, run_id: str, dataset: Any, sets: Mapping[str, StoredSet],
                        metrics: Sequence[str]) -> tuple[pa.Table, Evidence | None]:
    """(the evaluation's summary, `kneuron.engine.eval.summary.summarize`; its evidence, None without outcomes); the
    evidence is written in one batch unless it is already stored."""
    con = queries.connect(wh)
    try:
        evaluation = load_evaluation(con, eval_id, dataset, sets, metrics)
        found = stored_evidence(con, eval_id)
        if found is not None or not evaluation.outcomes:
            return evaluation.summary, found
        captions = queries.run(con, "suppress_eval_captions", {"eval_id": eval_id}).to_pylist()
    finally:
        con.close()
    concepts_in = dataset.concepts_in if dataset is not None else (lambda image_id: ())
    evidence = evidence_tables(evaluation.outcomes, evaluation.metrics)
    with wh.batch() as batch:
        batch.add("mentions", mention_rows(captions, concepts_in, eval_id, run_id))
        batch.add("evidence_intervals", _with_ids(evidence.intervals, eval_id, run_id))
        batch.add("evidence_paired", _with_ids(evidence.paired, eval_id, run_id))
        batch.add("evidence_gaps", _with_ids(evidence.gaps, eval_id, run_id))
    return evaluation.summary, evidence


__all__ = ["summarize_and_store"]
