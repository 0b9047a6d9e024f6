"""The specificity filter S_k, the excluded (massive) units of ``two_stage.sql`` and ``massive_units.sql``, against
independent NumPy / pandas computations of their definitions; `SpecificSpec` parsing; ``select --specific``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.queries.selection import SelectionConfig, SpecificSpec, ThresholdSpec, query_params, run_selection
from tests.helpers.cli_runner import run_cli
from tests.helpers.signal_world import build_warehouse, make_world
from tests.queries.test_selection import connect, reference_selection

AUTO, NONE = ThresholdSpec("auto"), ThresholdSpec("none")


@pytest.fixture(scope="module")
def world():
    stats, samples = make_world(seed=11)
    return stats, samples, connect(stats, samples)


def sql_sets(con, config: SelectionConfig, stage1: ThresholdSpec, stage2: ThresholdSpec,  # noqa: ANN001
             specific: SpecificSpec | None = None, scope: str = "final",
             excluded: list[tuple[int, int]] = ()) -> dict[str, dict]:  # type: ignore[assignment]
    rows = queries.run(con, "two_stage", query_params(config, "r1", config.concepts, stage1, stage2, specific,
                                                      scope, excluded)).to_pylist()
    out: dict[str, dict] = {}
    for row in rows:
        entry = out.setdefault(row["concept"], {"n_candidates": row["n_candidates"],
                                                "n_specific": row["n_specific"], "neurons": {}})
        if row["layer"] is not None:
            entry["neurons"][(row["layer"], row["unit"])] = row["score"]
    return out


def mean_scores(stats: pd.DataFrame, samples: pd.DataFrame, column: str) -> pd.DataFrame:
    """[neuron (layer, unit)] x [concept]: mean of ``column`` over each concept's ok images of run r1."""
    ok = samples[(samples.run_id == "r1") & (samples.status == "ok")]
    data = stats[stats.run_id == "r1"].merge(ok[["concept", "image_id"]], on=["concept", "image_id"])
    return data.assign(v=data[column].astype(np.float64)).pivot_table(index=["layer", "unit"], columns="concept",
                                                                       values="v", aggfunc="mean")


def candidates(stats, samples) -> dict[str, set]:  # noqa: ANN001
    ref = reference_selection(stats, samples, "r1", SelectionConfig(), AUTO, NONE)
    return {c: set(entry["neurons"]) for c, entry in ref.items()}


# ---------------------------------------------------------------------------------------------- S_k by definition
def test_stage1_specificity_is_not_a_candidate_of_another_concept(world):
    stats, samples, con = world
    cand = candidates(stats, samples)
    n_k = {c: set(e["neurons"]) for c, e in reference_selection(stats, samples, "r1", SelectionConfig(), AUTO,
                                                                AUTO).items()}
    got = sql_sets(con, SelectionConfig(), AUTO, AUTO, SpecificSpec("stage1"))
    for concept, own in cand.items():
        specific = own - set().union(*(cand[c] for c in cand if c != concept))
        assert got[concept]["n_specific"] == len(specific) > 0
        assert got[concept]["n_candidates"] == len(own)
        assert set(got[concept]["neurons"]) == n_k[concept] & specific  # the third filter: N_k ∩ S_k


@pytest.mark.parametrize("stage,column,ratio", [("g", "g_max", 1.0), ("a", "d_max", 1.0), ("g", "g_max", 1.5)])
def test_ratio_specificity_against_pandas(world, stage, column, ratio):
    stats, samples, con = world
    means = mean_scores(stats, samples, column)
    cand = candidates(stats, samples)
    got = sql_sets(con, SelectionConfig(), AUTO, NONE, SpecificSpec("ratio", stage, ratio))
    for concept in cand:
        other = means.drop(columns=concept).max(axis=1)
        ok = (means[concept] > 0) & (means[concept] > ratio * other)
        specific = {key for key in cand[concept] if ok.loc[key]}
        assert got[concept]["n_specific"] == len(specific)
        assert set(got[concept]["neurons"]) == specific  # stage 2 off: C_k ∩ S_k


@pytest.mark.parametrize("n", [1, 3, 8, 500])
def test_pool_scope_budget_is_the_best_specific_candidates(world, n):
    stats, samples, con = world
    means = mean_scores(stats, samples, "g_max")
    cand = candidates(stats, samples)
    got = sql_sets(con, SelectionConfig(), AUTO, ThresholdSpec("budget", n), SpecificSpec("stage1"), "pool")
    for concept, own in cand.items():
        specific = sorted(own - set().union(*(cand[c] for c in cand if c != concept)))
        ranked = sorted(specific, key=lambda key: (-means.loc[key, concept], key))
        assert sorted(got[concept]["neurons"]) == sorted(ranked[:n])
        for key in ranked[:n]:
            assert got[concept]["neurons"][key] == pytest.approx(means.loc[key, concept], rel=1e-9)


def test_one_concept_of_the_result_still_sees_the_others(world):
    stats, samples, con = world
    both = sql_sets(con, SelectionConfig(), AUTO, NONE, SpecificSpec("stage1"))
    one = sql_sets(con, SelectionConfig(concepts=("dog",)), AUTO, NONE, SpecificSpec("stage1"))
    assert sorted(one) == ["dog"] and one["dog"] == both["dog"]


def test_excluded_units_leave_the_pool_before_stage_1(world):
    stats, samples, con = world
    excluded = [(0, 1), (1, 5), (2, 39)]
    keep = ~pd.Series(list(zip(stats.layer, stats.unit, strict=True))).isin(excluded).to_numpy()
    ref = reference_selection(stats[keep], samples, "r1", SelectionConfig(), AUTO, AUTO)
    got = sql_sets(con, SelectionConfig(), AUTO, AUTO, excluded=excluded)
    for concept, entry in ref.items():
        assert got[concept]["n_candidates"] == entry["n_candidates"]
        assert sorted(got[concept]["neurons"]) == sorted(entry["neurons"])
        assert not set(got[concept]["neurons"]) & set(excluded)


# ---------------------------------------------------------------------------------------------- massive units
def test_massive_units_query_is_the_documented_rule(tmp_path):
    stats, samples = make_world(seed=5)
    stats = stats.copy()
    loud = (stats.layer == 1) & (stats.unit == 7)
    stats.loc[loud, "o_mean"] = 40.0 * np.sign(stats.loc[loud, "o_mean"])  # |o_mean| = 40 on every image
    root = tmp_path / "wh"
    build_warehouse(root, stats, samples)
    con = queries.connect(root)
    try:
        for k in (2.0, 10.0):
            rows = queries.run(con, "massive_units", {"run_id": "r1", "k": k}).to_pylist()
            ok = samples[(samples.run_id == "r1") & (samples.status == "ok")]
            data = stats[stats.run_id == "r1"].merge(ok[["concept", "image_id"]], on=["concept", "image_id"])
            size = data.assign(m=data.o_mean.astype(np.float16).astype(np.float64).abs()).groupby(
                ["layer", "unit"]).m.mean()
            logs = np.log(size[size > 0])
            q1, q3 = np.quantile(logs, [0.25, 0.75])
            want = size[(size > k * size.median()) & (np.log(size) > q3 + 3 * (q3 - q1))]
            assert [(r["layer"], r["unit"]) for r in rows] == sorted(want.index, key=lambda key: (-want[key], key))
            assert [r["ratio"] for r in rows] == pytest.approx((want / size.median()).sort_values(
                ascending=False).to_numpy(), rel=1e-9)
        assert [(r["layer"], r["unit"]) for r in rows] == [(1, 7)]  # k = 10: only the loud unit
        default = queries.run(con, "massive_units", {"run_id": None, "k": None}).to_pylist()
        assert {(r["run_id"], r["layer"], r["unit"]) for r in default} >= {("r1", 1, 7)}
        selection = run_selection(con, SelectionConfig(run_id="r1", exclude_massive=10.0))
        assert not {(r["layer"], r["unit"]) for r in selection.neuron_sets.to_pylist()} & {(1, 7)}
        assert all('"exclude_massive":10.0' in p for p in selection.neuron_sets.column("params_json").to_pylist())
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------- specs and CLI
@pytest.mark.parametrize("text,spec", [("stage1", SpecificSpec("stage1")), ("ratio:2", SpecificSpec("ratio", "g", 2)),
                                       ("ratio2:1", SpecificSpec("ratio", "g", 1)),
                                       ("ratio1:1.5", SpecificSpec("ratio", "a", 1.5))])
def test_specific_spec_parse(text, spec):
    assert SpecificSpec.parse(text) == spec
    assert SpecificSpec.from_params(spec.describe()) == spec


@pytest.mark.parametrize("text,message", [("nope", "bad specificity 'nope'"), ("ratio:x", "is not a number"),
                                          ("ratio:-1", "ratio must be a finite number >= 0")])
def test_specific_spec_errors(text, message):
    with pytest.raises(KneuronError, match=message):
        SpecificSpec.parse(text)


def test_select_specific_stores_a_distinct_method_and_keeps_two_stage_ids(tmp_path, world, capsys):
    stats, samples, _ = world
    root = tmp_path / "wh"
    build_warehouse(root, stats, samples)
    code, out, _ = run_cli(["select", "--warehouse", str(root), "--no-baselines"], capsys)
    assert code == 0
    con = queries.connect(root)
    plain = {r[0] for r in con.execute("SELECT DISTINCT set_id FROM neuron_sets").fetchall()}
    con.close()
    code, out, _ = run_cli(["select", "--warehouse", str(root), "--no-baselines", "--specific", "stage1"], capsys)
    assert code == 0 and "specific_C_k" in out and "specific stage1" in out
    con = queries.connect(root)
    rows = con.execute("SELECT method, set_id, count(*) FROM neuron_sets GROUP BY ALL").fetchall()
    con.close()
    assert {set_id for method, set_id, _ in rows if method == "two_stage"} == plain
    assert {method for method, _, _ in rows} == {"two_stage", "two_stage_specific"}
    code, _, err = run_cli(["select", "--warehouse", str(root), "--specific", "ratio:abc"], capsys)
    assert code == 2 and "is not a number" in err and err.count("\n") == 1
