"""``select --specific`` in one pass of ``two_stage.sql``: the same N_k and N_k ∩ S_k (sets, summaries, set ids)
as the two passes it replaced (the plain query, then the query with the filter), and one query, not two."""
from __future__ import annotations

import numpy as np
import pytest

from kneuron import queries
from kneuron.queries import selection
from kneuron.queries.selection import SelectionConfig, SpecificSpec, ThresholdSpec, query_params, run_selection
from tests.helpers.signal_world import make_world
from tests.queries.test_selection import connect

CONFIGS = [
    SelectionConfig(run_id="r1", specific=SpecificSpec("stage1")),
    SelectionConfig(run_id="r1", specific=SpecificSpec("ratio", "g", 1.0)),
    SelectionConfig(run_id="r1", specific=SpecificSpec("ratio", "a", 1.5), concepts=("dog",)),
    SelectionConfig(run_id="r1", specific=SpecificSpec("ratio", "g", 2.0), stage2=ThresholdSpec("budget", 5.0)),
]


@pytest.fixture(scope="module")
def con():
    stats, samples = make_world(seed=11)
    return connect(stats, samples)


def two_pass(con, config: SelectionConfig) -> dict[tuple[str, str], list]:  # noqa: ANN001
    """{(concept, method): [(layer, unit, score)]} and the summary counts, as the two separate queries give them."""
    out: dict[tuple[str, str], list] = {}
    for method, specific in (("two_stage", None), (selection.SPECIFIC_METHOD, config.specific)):
        rows = queries.run(con, "two_stage", query_params(config, "r1", config.concepts, config.stage1,
                                                          config.stage2, specific, "final")).to_pylist()
        for row in rows:
            entry = out.setdefault((row["concept"], method), [row["n_candidates"], row["n_selected"],
                                                              row["n_specific"]])
            if row["layer"] is not None:
                entry.append((row["layer"], row["unit"], float(np.float32(row["score"]))))  # stored float32
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.specific.describe()}-{len(c.concepts)}")
def test_one_pass_gives_the_sets_of_the_two_passes(con, config, monkeypatch):  # noqa: ANN001
    calls: list[str] = []
    run = queries.run

    def counting(c, name: str, params=None):  # noqa: ANN001, ANN202
        calls.append(name)
        return run(c, name, params)

    monkeypatch.setattr(queries, "run", counting)
    result = run_selection(con, config)
    assert calls.count("two_stage") == 3  # one pass for both sets, then the two single-stage baselines
    monkeypatch.undo()
    expected = two_pass(con, config)
    got: dict[tuple[str, str], list] = {}
    summary = {(row["concept"], row["method"]): row for row in result.summary.to_pylist()}
    for row in result.neuron_sets.to_pylist():
        if row["method"] in ("two_stage", selection.SPECIFIC_METHOD):
            key = (row["concept"], row["method"])
            got.setdefault(key, [summary[key]["n_candidates"], summary[key]["n_selected"],
                                 summary[key]["n_specific"]]).append((row["layer"], row["unit"], row["score"]))
    for key in expected:  # empty sets have no neuron_sets rows: compare their counts
        got.setdefault(key, [summary[key]["n_candidates"], summary[key]["n_selected"], summary[key]["n_specific"]])
    assert {k: v[:3] + sorted(v[3:]) for k, v in got.items()} == {k: v[:3] + sorted(v[3:]) for k, v in
                                                                  expected.items()}
    assert any(len(v) > 3 for k, v in expected.items() if k[1] == selection.SPECIFIC_METHOD)
