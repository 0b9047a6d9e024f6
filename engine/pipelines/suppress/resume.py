"""What a suppression evaluation finds stored when it starts, so that a rerun resumes it: its ``evals`` row
(checked against the settings), the (concept, method) jobs whose captions are in, and how many captions the jobs
still to run will make (the progress total).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import jsonable
from kneuron.engine.eval.images import EvalImages
from kneuron.engine.eval.summary import UNMODIFIED
from kneuron.engine.pipelines.suppress.inputs import stored_identity


def check_stored(con: duckdb.DuckDBPyConnection, eval_id: str, run_id: str, identity: Mapping[str, Any]) -> bool:
    """Whether evaluation ``eval_id`` is stored already; `KneuronError` if it is stored with other settings."""
    existing = queries.run(con, "suppress_eval_row", {"eval_id": eval_id}).to_pylist()
    if existing and existing[0]["run_id"] != run_id:
        raise KneuronError(f"evaluation {eval_id!r} belongs to run {existing[0]['run_id']!r}, not {run_id!r}")
    if existing and stored_identity(existing[0]) != json.loads(json.dumps(identity, default=jsonable)):
        raise KneuronError(f"evaluation {eval_id!r} is stored with other settings; choose another eval_id "
                           "or leave it out (derived from the settings)")
    return bool(existing)


def captions_to_make(jobs: Sequence[tuple[str, str]], done: set[tuple[str, str]], methods: Sequence[str],
                     images: EvalImages, unmodified: Mapping[int, str]) -> int:
    """How many captions the jobs still to run will generate (the total of the progress lines)."""
    have = set(unmodified)
    total = 0
    for concept, method in jobs:
        ids = images.target[concept] + images.other[concept]
        if method == UNMODIFIED:
            if any((concept, m) not in done for m in (UNMODIFIED, *methods)):
                total += sum(i not in have for i in ids)
                have.update(ids)
        elif (concept, method) not in done:
            total += len(ids)
    return total


def done_jobs(con: duckdb.DuckDBPyConnection, eval_id: str) -> list[tuple[str, str]]:
    """The (concept, method) pairs of evaluation ``eval_id`` whose captions are stored, sorted."""
    rows = queries.run(con, "suppress_eval_captions", {"eval_id": eval_id}).select(["concept", "method"]).to_pydict()
    return sorted(set(zip(rows["concept"], rows["method"], strict=True)))


__all__ = ["captions_to_make", "check_stored", "done_jobs"]
