"""Two-stage selection in DuckDB against an independent NumPy implementation of the same definitions."""
from __future__ import annotations

import itertools
import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.queries.selection import (
    NEURON_SETS_SCHEMA,
    SelectionConfig,
    ThresholdSpec,
    query_params,
    run_selection,
    select_neurons,
    set_id_of,
)
from tests.helpers.cli_runner import run_cli
from tests.helpers.signal_world import CONCEPTS, STAT_COLUMNS, build_warehouse, make_world

# ------------------------------------------------------------------------------------------ fixture data


def connect(stats: pd.DataFrame, samples: pd.DataFrame, splits: pd.DataFrame | None = None
            ) -> duckdb.DuckDBPyConnection:
    """A connection with the views neuron_stats, samples, splits and runs built from in-memory tables."""
    con = duckdb.connect()
    con.register("neuron_stats_df", pa.Table.from_pandas(stats, preserve_index=False))
    con.register("samples_df", pa.Table.from_pandas(samples, preserve_index=False))
    con.execute("CREATE VIEW neuron_stats AS SELECT * FROM neuron_stats_df")
    con.execute("CREATE VIEW samples AS SELECT * FROM samples_df")
    con.register("splits_df", pa.Table.from_pandas(splits if splits is not None else pd.DataFrame(
        {"run_id": pd.Series([], dtype=str), "concept": pd.Series([], dtype=str),
         "image_id": pd.Series([], dtype=np.int64), "split": pd.Series([], dtype=str)}), preserve_index=False))
    con.execute("CREATE VIEW splits AS SELECT * FROM splits_df")
    con.execute("CREATE VIEW runs AS SELECT * FROM (VALUES ('r1', TIMESTAMP '2025-01-02'), "
                "('r2', TIMESTAMP '2025-01-01')) AS t(run_id, created_at)")
    return con


# ------------------------------------------------------------------------------------------ NumPy reference
def knee_threshold(means: np.ndarray, layers: np.ndarray, units: np.ndarray) -> float:
    """Triangle rule: the score at the knee of the positive scores sorted descending (0 without a knee)."""
    positive = means > 0
    if not positive.any():
        return 0.0
    order = np.lexsort((units[positive], layers[positive], -means[positive]))
    s = means[positive][order]
    m = s.size
    best_j, best_d = 0, -1.0
    for j in range(m):
        x = j / (m - 1) if m > 1 else np.nan
        y = (s[j] - s[-1]) / (s[0] - s[-1]) if s[0] > s[-1] else np.nan
        d = abs(1.0 - x - y)
        d = 0.0 if np.isnan(d) else d
        if d > best_d:
            best_j, best_d = j, d
    return float(s[best_j]) if best_d > 0 else 0.0


def stage_threshold(spec: ThresholdSpec, concept: str, means, layers, units) -> float | None:
    value = spec.value_for(concept)
    if spec.kind == "absolute":
        return value
    if means.size == 0:  # empty pool (no candidates)
        return 0.0 if spec.kind == "auto" else None
    if spec.kind == "quantile":
        return float(np.quantile(means, value))
    if spec.kind == "auto":
        return knee_threshold(means, layers, units)
    if spec.kind == "budget":
        n = int(value)
        if n == 0:
            return None
        return float(np.sort(means)[::-1][min(n, means.size) - 1])
    return None


def stage_pass(spec: ThresholdSpec, concept: str, aggregate: str, min_share: float, values: np.ndarray,
               layers, units) -> tuple[np.ndarray, np.ndarray, float | None]:
    """values: [image, neuron] with NaN for missing rows. Returns (passes [neuron], score [neuron], threshold)."""
    means = np.nanmean(values, axis=0)
    t = stage_threshold(spec, concept, means, layers, units)
    if aggregate == "share" and spec.kind != "none":
        present = ~np.isnan(values)
        above = present & (values > (t if t is not None else np.inf))
        score = above.sum(axis=0) / present.sum(axis=0)
    else:
        score = means
    if spec.kind == "none":
        return np.ones(means.size, bool), score, t
    if spec.kind == "budget":
        order = np.lexsort((units, layers, -means, -score))
        passes = np.zeros(means.size, bool)
        passes[order[: int(spec.value_for(concept))]] = True
        return passes, score, t
    if aggregate == "share":
        return score >= min_share, score, t
    return score > t, score, t


def reference_selection(stats: pd.DataFrame, samples: pd.DataFrame, run_id: str, config: SelectionConfig,
                        stage1: ThresholdSpec, stage2: ThresholdSpec) -> dict[str, dict]:
    ok = samples[(samples.run_id == run_id) & (samples.status == "ok")]
    data = stats[stats.run_id == run_id].merge(ok[["concept", "image_id"]], on=["concept", "image_id"])
    out = {}
    concepts = config.concepts or sorted(data.concept.unique())
    for concept in concepts:
        part = data[data.concept == concept]
        col_a, col_g = ("d_max", "g_max") if config.reduce == "max" else ("d_mean", "g_mean")
        images, image_index = np.unique(part.image_id.to_numpy(), return_inverse=True)
        keys = part.layer.to_numpy().astype(np.int64) * 100_000 + part.unit.to_numpy()
        neurons, neuron_index = np.unique(keys, return_inverse=True)  # sorted by (layer, unit)
        layers, units = neurons // 100_000, neurons % 100_000
        va = np.full((images.size, neurons.size), np.nan)
        vg = np.full((images.size, neurons.size), np.nan)
        va[image_index, neuron_index] = part[col_a].to_numpy(np.float64)
        vg[image_index, neuron_index] = part[col_g].to_numpy(np.float64)
        in_c, score_a, t_a = stage_pass(stage1, concept, config.aggregate, config.min_share, va, layers, units)
        pool = in_c if config.stage2_pool == "candidates" else np.ones_like(in_c)
        in_n_pool, score_g_pool, t_g = stage_pass(stage2, concept, config.aggregate, config.min_share,
                                                  vg[:, pool], layers[pool], units[pool])
        in_n = np.zeros_like(in_c)
        in_n[np.flatnonzero(pool)[in_n_pool]] = True
        score_g = np.full(in_c.size, np.nan)
        score_g[pool] = score_g_pool
        chosen = in_c & in_n
        score = score_a if stage2.kind == "none" else score_g
        out[concept] = {
            "n_images": int((~np.isnan(va)).sum(axis=0).max()),
            "n_candidates": int(in_c.sum()),
            "threshold_a": t_a,
            "threshold_g": t_g,
            "neurons": {(int(layer), int(u)): float(s)
                        for layer, u, s in zip(layers[chosen], units[chosen], score[chosen], strict=True)},
        }
    return out


def sql_selection(con, config: SelectionConfig, run_id: str, stage1: ThresholdSpec, stage2: ThresholdSpec):
    rows = queries.run(con, "two_stage", query_params(config, run_id, config.concepts, stage1, stage2)).to_pylist()
    out: dict[str, dict] = {}
    for row in rows:
        entry = out.setdefault(row["concept"], {key: row[key] for key in
                                                ("n_images", "n_candidates", "n_selected", "threshold_a",
                                                 "threshold_g")} | {"neurons": {}})
        if row["layer"] is not None:
            entry["neurons"][(row["layer"], row["unit"])] = row["score"]
    return out


def assert_same(sql: dict, ref: dict) -> None:
    assert sorted(sql) == sorted(ref)
    for concept in ref:
        got, want = sql[concept], ref[concept]
        assert got["n_images"] == want["n_images"], concept
        assert got["n_candidates"] == want["n_candidates"], concept
        assert got["n_selected"] == len(want["neurons"]), concept
        for key in ("threshold_a", "threshold_g"):
            if want[key] is None:
                assert got[key] is None, (concept, key)
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (concept, key)
        assert sorted(got["neurons"]) == sorted(want["neurons"]), concept
        for neuron, score in want["neurons"].items():
            assert got["neurons"][neuron] == pytest.approx(score, rel=1e-9, abs=1e-12), (concept, neuron)


SPECS_A = {
    "absolute": ThresholdSpec("absolute", 0.8),
    "quantile": ThresholdSpec("quantile", 0.9),
    "budget": ThresholdSpec("budget", 15),
    "auto": ThresholdSpec("auto"),
}
SPECS_G = {
    "absolute": ThresholdSpec("absolute", 0.2),
    "quantile": ThresholdSpec("quantile", 0.5),
    "budget": ThresholdSpec("budget", 6),
    "auto": ThresholdSpec("auto"),
}
CASES = list(itertools.product(SPECS_A, SPECS_G, ["mean", "share"]))


@pytest.fixture(scope="module")
def world():
    stats, samples = make_world(seed=7)
    return stats, samples, connect(stats, samples)


# ------------------------------------------------------------------------------------------ property tests
@pytest.mark.parametrize("kind_a,kind_g,aggregate", CASES)
def test_sql_equals_numpy_reference(world, kind_a, kind_g, aggregate):
    stats, samples, con = world
    index = CASES.index((kind_a, kind_g, aggregate))
    reduce, pool = [("max", "candidates"), ("mean", "all"), ("mean", "candidates"), ("max", "all")][index % 4]
    config = SelectionConfig(run_id="r1", stage1=SPECS_A[kind_a], stage2=SPECS_G[kind_g], aggregate=aggregate,
                             reduce=reduce, stage2_pool=pool, min_share=0.4)
    ref = reference_selection(stats, samples, "r1", config, config.stage1, config.stage2)
    sql = sql_selection(con, config, "r1", config.stage1, config.stage2)
    assert_same(sql, ref)
    assert any(entry["neurons"] for entry in ref.values()), "the case must select something to be a test"


@pytest.mark.parametrize("aggregate", ["mean", "share"])
@pytest.mark.parametrize("baseline", ["stage1_only", "stage2_only"])
def test_single_stage_baselines_equal_reference(world, aggregate, baseline):
    stats, samples, con = world
    budget = ThresholdSpec("budget", 0, {"dog": 5, "it's": 9, "traffic light": 1})
    stage1, stage2 = (budget, ThresholdSpec("none")) if baseline == "stage1_only" else (ThresholdSpec("none"), budget)
    config = SelectionConfig(run_id="r1", aggregate=aggregate)
    ref = reference_selection(stats, samples, "r1", config, stage1, stage2)
    sql = sql_selection(con, config, "r1", stage1, stage2)
    assert_same(sql, ref)
    assert {c: len(e["neurons"]) for c, e in sql.items()} == {"dog": 5, "it's": 9, "traffic light": 1}


KINDS = st.sampled_from(["absolute", "quantile", "budget", "auto"])


def spec_strategy(kind: str) -> st.SearchStrategy[ThresholdSpec]:
    if kind == "absolute":
        return st.floats(-1.0, 3.0).map(lambda v: ThresholdSpec("absolute", round(v, 3) + 1e-4))
    if kind == "quantile":
        return st.floats(0.0, 1.0).map(lambda q: ThresholdSpec("quantile", q))
    if kind == "budget":
        return st.integers(0, 70).map(lambda n: ThresholdSpec("budget", n))
    return st.just(ThresholdSpec("auto"))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), spec_a=KINDS.flatmap(spec_strategy), spec_g=KINDS.flatmap(spec_strategy),
       aggregate=st.sampled_from(["mean", "share"]), reduce=st.sampled_from(["max", "mean"]),
       pool=st.sampled_from(["candidates", "all"]), min_share=st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0]))
def test_sql_equals_numpy_reference_random(seed, spec_a, spec_g, aggregate, reduce, pool, min_share):
    stats, samples = make_world(seed=seed, n_images=4, n_layers=2, n_units=24)
    con = connect(stats, samples)
    config = SelectionConfig(run_id="r1", stage1=spec_a, stage2=spec_g, aggregate=aggregate, reduce=reduce,
                             stage2_pool=pool, min_share=min_share)
    ref = reference_selection(stats, samples, "r1", config, spec_a, spec_g)
    assert_same(sql_selection(con, config, "r1", spec_a, spec_g), ref)


def test_knee_rule_finds_the_head_of_a_heavy_tail():
    """10 strong neurons on a flat tail of 200: the knee keeps exactly the strong ones."""
    rng = np.random.default_rng(0)
    means = np.concatenate([10 + rng.random(10), 0.1 + 0.01 * rng.random(200)])
    rows = [("r1", "cat", 1, 0, u, 0.0, 0.0, float(m), 1.0, 1.0, float(m)) for u, m in enumerate(means)]
    stats = pd.DataFrame(rows, columns=["run_id", "concept", "image_id", "layer", "unit", "o_mean", "i_mean",
                                        "d_max", "g_max", "g_mean", "d_mean"])
    con = connect(stats, pd.DataFrame([("r1", "cat", 1, "ok")], columns=["run_id", "concept", "image_id", "status"]))
    config = SelectionConfig(run_id="r1", stage2=ThresholdSpec("none"), baselines=False)
    table = select_neurons(con, config)
    assert sorted(table.column("unit").to_pylist()) == list(range(10))


@pytest.mark.parametrize("aggregate", ["mean", "share"])
@pytest.mark.parametrize("stage1,stage2", [
    (ThresholdSpec("auto"), ThresholdSpec("auto")),
    (ThresholdSpec("budget", 7), ThresholdSpec("none")),
    (ThresholdSpec("none"), ThresholdSpec("budget", 0, {"dog": 3, "it's": 40, "traffic light": 0})),
    (ThresholdSpec("budget", 50), ThresholdSpec("budget", 5)),
])
def test_ties_give_the_reference_sets(aggregate, stage1, stage2):
    """Values on a coarse grid tie many means (and shares): the knee and the budgets (order: score, mean, layer,
    unit) still pick exactly the reference's neurons."""
    stats, samples = make_world(seed=11)
    for column in STAT_COLUMNS:
        stats[column] = (stats[column] * 2).round() / 2
    config = SelectionConfig(run_id="r1", stage1=stage1, stage2=stage2, aggregate=aggregate, min_share=0.5)
    ref = reference_selection(stats, samples, "r1", config, stage1, stage2)
    assert_same(sql_selection(connect(stats, samples), config, "r1", stage1, stage2), ref)
    assert any(entry["neurons"] for entry in ref.values())


@pytest.mark.parametrize("aggregate", ["mean", "share"])
def test_budgets_beyond_the_top_n_aggregate_fall_back_exactly(world, aggregate):
    """DuckDB's top-n aggregate takes n < 10^6; a larger budget takes the sorted-list and window plan: every neuron
    passes and the threshold is the smallest mean, as in the reference."""
    stats, samples, con = world
    big = ThresholdSpec("budget", 0, {"dog": 1_000_000, "it's": 3})
    for stage1, stage2 in ((big, ThresholdSpec("none")), (ThresholdSpec("none"), big)):
        config = SelectionConfig(run_id="r1", aggregate=aggregate)
        ref = reference_selection(stats, samples, "r1", config, stage1, stage2)
        sql = sql_selection(con, config, "r1", stage1, stage2)
        assert_same(sql, ref)
        assert sql["it's"]["n_selected"] == 3 and sql["dog"]["n_selected"] == sql["dog"]["n_candidates"] > 100


def neuron_windows(con, config: SelectionConfig, stage1: ThresholdSpec, stage2: ThresholdSpec) -> list[str]:
    """The window functions over neurons (ordered by layer and unit) in DuckDB's plan of two_stage.sql."""
    sql = queries.load("two_stage")
    queries.install_views(con)
    params = queries.bind(sql, query_params(config, "r1", [], stage1, stage2))
    found: list[str] = []

    def walk(node: dict) -> None:
        if "WINDOW" in str(node.get("name")) and "layer" in json.dumps(node.get("extra_info")):
            found.append(json.dumps(node.get("extra_info")))
        for child in node.get("children", []):
            walk(child)

    for node in json.loads(con.sql("EXPLAIN (FORMAT JSON) " + sql, params=params).fetchall()[0][1]):
        walk(node)
    return found


def test_default_and_baseline_plans_sort_no_neuron_table(world):
    """The knee (which ranks only the value buckets that can hold it) and the budgets below 10^6 need no window
    over the neurons in (layer, unit) order (a sort of every neuron: the cost that dominated selection at 7B
    scale); the fallback for larger budgets has one, so the check can fail."""
    _, _, con = world
    config = SelectionConfig(run_id="r1")
    budget, off = ThresholdSpec("budget", 0, {"dog": 5}), ThresholdSpec("none")
    for stage1, stage2 in ((config.stage1, config.stage2), (budget, off), (off, budget)):
        assert neuron_windows(con, config, stage1, stage2) == [], (stage1, stage2)
    assert len(neuron_windows(con, config, ThresholdSpec("budget", 2_000_000), off)) == 1


@pytest.mark.parametrize("shape", ["lognormal", "two_clusters", "flat"])
def test_knee_on_large_pools_equals_the_full_sort(shape):
    """4000 neurons per concept, hundreds per value bucket: the bucketed knee (which ranks only the buckets that can
    hold it) gives the threshold of a full sort, and a flat pool gives no knee."""
    rng = np.random.default_rng(3)
    n = 4000
    means = {"lognormal": rng.lognormal(0.0, 1.5, n),
             "two_clusters": np.concatenate([5 + rng.random(n // 8), 0.5 * rng.random(n - n // 8)]),
             "flat": np.full(n, 0.7)}[shape]
    layers, units = np.arange(n) // 1000, np.arange(n) % 1000
    rows = [("r1", "cat", 1, int(layer), int(unit), 0.0, 0.0, float(m), 1.0, 1.0, float(m))
            for layer, unit, m in zip(layers, units, means, strict=True)]
    stats = pd.DataFrame(rows, columns=["run_id", "concept", "image_id", "layer", "unit", "o_mean", "i_mean",
                                        "d_max", "g_max", "g_mean", "d_mean"])
    stats[["d_max", "d_mean"]] = stats[["d_max", "d_mean"]].astype(np.float32)
    con = connect(stats, pd.DataFrame([("r1", "cat", 1, "ok")], columns=["run_id", "concept", "image_id", "status"]))
    config = SelectionConfig(run_id="r1", stage2=ThresholdSpec("none"), baselines=False)
    got = sql_selection(con, config, "r1", config.stage1, config.stage2)["cat"]
    want = knee_threshold(means.astype(np.float32).astype(np.float64), layers, units)
    assert got["threshold_a"] == want
    assert (want == 0.0) == (shape == "flat")


def test_per_concept_threshold_overrides(world):
    stats, samples, con = world
    stage1 = ThresholdSpec("absolute", 0.5, {"dog": 2.0})
    config = SelectionConfig(run_id="r1", stage1=stage1, stage2=ThresholdSpec("none"))
    ref = reference_selection(stats, samples, "r1", config, stage1, config.stage2)
    sql = sql_selection(con, config, "r1", stage1, config.stage2)
    assert_same(sql, ref)
    assert sql["dog"]["threshold_a"] == 2.0 and sql["it's"]["threshold_a"] == 0.5


# ------------------------------------------------------------------------------------------ select_neurons
def test_select_neurons_rows_ids_and_baselines(world):
    stats, samples, con = world
    config = SelectionConfig(concepts=("it's", "dog"))  # run: latest (r1)
    selection = run_selection(con, config)
    table = selection.neuron_sets
    assert selection.run_id == "r1"
    assert table.schema == NEURON_SETS_SCHEMA
    rows = table.to_pandas()
    assert set(rows.concept) == {"dog", "it's"}
    assert set(rows.method) == {"two_stage", "stage1_only", "stage2_only"}
    ref = reference_selection(stats, samples, "r1", config, config.stage1, config.stage2)
    for concept in ("dog", "it's"):
        mine = rows[(rows.concept == concept) & (rows.method == "two_stage")]
        assert set(zip(mine.layer, mine.unit, strict=True)) == set(ref[concept]["neurons"])
        n_k = len(mine)
        assert 0 < n_k < ref[concept]["n_candidates"] or n_k == ref[concept]["n_candidates"]
        for method in ("stage1_only", "stage2_only"):
            part = rows[(rows.concept == concept) & (rows.method == method)]
            assert len(part) == n_k
            params = json.loads(part.params_json.iloc[0])
            assert params["budget"] == n_k and params["budget_of"] == mine.set_id.iloc[0]
        params = json.loads(mine.params_json.iloc[0])
        assert params["stage1"] == {"kind": "auto"} and params["resolved"]["n_selected"] == n_k
        assert list(json.loads(mine.params_json.iloc[0])) == sorted(params)
        one_id = {k: v for k, v in params.items() if k != "resolved"}
        assert mine.set_id.iloc[0] == set_id_of("r1", concept, "two_stage", one_id)
    # stage1_only baseline = top |N_k| by the stage-1 mean score
    dog = rows[rows.concept == "dog"]
    top = stats[(stats.run_id == "r1") & (stats.concept == "dog") & (stats.image_id != 100)]
    top = top.groupby(["layer", "unit"]).d_max.mean().sort_values(ascending=False)
    n_k = int((dog.method == "two_stage").sum())
    stage1 = dog[dog.method == "stage1_only"]
    assert set(zip(stage1.layer, stage1.unit, strict=True)) == set(top.index[:n_k])
    summary = selection.summary.to_pandas().set_index(["concept", "method"])
    assert summary.loc[("dog", "two_stage"), "n_selected"] == n_k


def test_selection_is_deterministic(world):
    _, _, con = world
    config = SelectionConfig(run_id="r1", aggregate="share", stage1=ThresholdSpec("quantile", 0.8))
    first, second = select_neurons(con, config), select_neurons(con, config)
    assert first.drop(["created_at"]).equals(second.drop(["created_at"]))
    other = select_neurons(con, SelectionConfig(run_id="r1", aggregate="share",
                                                stage1=ThresholdSpec("quantile", 0.85)))
    assert set(first.column("set_id").to_pylist()).isdisjoint(other.column("set_id").to_pylist())


def test_concept_with_a_quote_is_bound_not_formatted(world):
    _, _, con = world
    table = select_neurons(con, SelectionConfig(run_id="r1", concepts=("it's",), baselines=False))
    assert set(table.column("concept").to_pylist()) == {"it's"}
    assert table.num_rows > 0


def test_skipped_eval_images_and_other_runs_do_not_count(world):
    stats, samples, con = world
    bad = stats.copy()
    bad.loc[bad.image_id == 100, STAT_COLUMNS] = 1e6  # the skipped image
    bad.loc[bad.run_id == "r2", STAT_COLUMNS] = -1e6
    extra = bad[(bad.run_id == "r1") & (bad.image_id == 101)].assign(image_id=900)
    extra.loc[:, STAT_COLUMNS] = 5e5  # an ok image of the eval split
    bad = pd.concat([bad, extra], ignore_index=True)
    samples2 = pd.concat([samples, pd.DataFrame([("r1", c, 900, "ok") for c in CONCEPTS], columns=samples.columns)])
    splits = pd.DataFrame([("r1", c, 900, "eval") for c in CONCEPTS] + [("r1", c, 101, "ident") for c in CONCEPTS],
                          columns=["run_id", "concept", "image_id", "split"])
    con2 = connect(bad, samples2, splits)
    config = SelectionConfig(run_id="r1", baselines=False)
    assert select_neurons(con2, config).drop(["created_at"]).equals(select_neurons(con, config).drop(["created_at"]))


@pytest.mark.parametrize("text,kind,value", [("auto", "auto", None), ("abs:0.5", "absolute", 0.5),
                                             ("q:0.99", "quantile", 0.99), ("top:30", "budget", 30.0),
                                             ("none", "none", None)])
def test_threshold_spec_parse(text, kind, value):
    assert ThresholdSpec.parse(text) == ThresholdSpec(kind, value)


@pytest.mark.parametrize("text,message", [("q:1.5", "quantile threshold must lie in [0, 1]"),
                                          ("top:2.5", "budget threshold must be a whole number"),
                                          ("abs:x", "is not a number"), ("median", "bad threshold 'median'"),
                                          ("abs:nan", "must be finite")])
def test_threshold_spec_errors(text, message):
    with pytest.raises(KneuronError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ThresholdSpec.parse(text)


def test_errors_name_the_problem(world):
    _, _, con = world
    with pytest.raises(KneuronError, match="unknown concept\\(s\\) or no ok images in run 'r1': 'zebra'"):
        select_neurons(con, SelectionConfig(run_id="r1", concepts=("dog", "zebra")))
    with pytest.raises(KneuronError, match="no neuron_stats of ok images in run 'nope'"):
        select_neurons(con, SelectionConfig(run_id="nope"))
    with pytest.raises(KneuronError, match="unknown aggregation 'median'"):
        SelectionConfig(aggregate="median")
    with pytest.raises(KneuronError, match=r"query parameters not given: \$concepts, \$run_id, "):
        queries.run(con, "two_stage", {})
    with pytest.raises(KneuronError, match="unknown query 'nope'"):
        queries.load("nope")


def test_loader_finds_parameters_outside_comments_and_strings():
    sql = "-- $not_this\nSELECT '$nor_this' AS a, $x AS b, /* $no */ $y + $x AS c"
    assert queries.parameters(sql) == ["x", "y"]


# ------------------------------------------------------------------------------------------ warehouse + CLI


@pytest.fixture(scope="module")
def warehouse_root(tmp_path_factory, world):
    stats, samples, _ = world
    root = tmp_path_factory.mktemp("wh") / "kneuron-warehouse"
    build_warehouse(root, stats, samples)
    return root




def test_cli_select_writes_neuron_sets_once(tmp_path, world, capsys):
    import shutil

    from kneuron import warehouse

    stats, samples, _ = world
    root = tmp_path / "wh"
    build_warehouse(root, stats, samples)
    code, out, err = run_cli(["select", "--warehouse", str(root), "--concept", "it's", "--concept", "dog",
                              "--stage1", "q:0.9", "--stage2", "auto"], capsys)
    assert code == 0, err
    config = SelectionConfig(concepts=("it's", "dog"), stage1=ThresholdSpec("quantile", 0.9))
    con = warehouse.connect(root)
    expected = select_neurons(con, config)
    # the stored columns (the view adds budget and base_method, derived from the method label)
    stored = con.sql("SELECT * EXCLUDE (budget, base_method) FROM neuron_sets "
                     "ORDER BY set_id, layer, unit").to_arrow_table()
    assert stored.num_rows == expected.num_rows > 0
    assert stored.drop(["created_at"]).to_pylist() == \
        expected.sort_by([("set_id", "ascending"), ("layer", "ascending"), ("unit", "ascending")]) \
        .drop(["created_at"]).to_pylist()
    summary = run_selection(con, config).summary.to_pandas().set_index(["concept", "method"])
    assert out.startswith("run r1: 2 concept(s); wrote 6 neuron set(s)")
    for concept in ("dog", "it's"):
        line = next(line for line in out.splitlines() if f"│ {concept} " in line)
        cells = [c.strip() for c in line.strip("│").split("│")]
        n_c, n_n = summary.loc[(concept, "two_stage"), ["n_candidates", "n_selected"]]
        assert cells[2:6] == [str(n_c), str(n_n), str(n_n), str(n_n)]
        two = expected.filter(pc.and_(pc.equal(expected.column("concept"), concept),
                                              pc.equal(expected.column("method"), "two_stage")))
        layers = pd.Series(two.column("layer").to_pylist()).value_counts().sort_index()
        assert cells[6] == " ".join(f"{layer}:{n}" for layer, n in layers.items())
    code, out, _ = run_cli(["select", "--warehouse", str(root), "--concept", "it's", "--concept", "dog",
                            "--stage1", "q:0.9"], capsys)
    assert code == 0 and "wrote 0 neuron set(s), 6 already stored" in out
    assert warehouse.connect(root).sql("SELECT count(*) FROM neuron_sets").fetchall()[0][0] == stored.num_rows
    shutil.rmtree(root)


@pytest.mark.parametrize("args,message", [
    (["--stage1", "q:2"], "kneuron: error: quantile threshold must lie in [0, 1], got 2.0\n"),
    (["--concept", "zebra"], "kneuron: error: unknown concept(s) or no ok images in run 'r1': 'zebra'\n"),
    (["--run", "r9"], "kneuron: error: no neuron_stats of ok images in run 'r9'\n"),
])
def test_cli_select_errors_are_one_line(warehouse_root, capsys, args, message):
    code, out, err = run_cli(["select", "--warehouse", str(warehouse_root), *args], capsys)
    assert (code, out, err) == (2, "", message)


# ------------------------------------------------------------------------------------------ analyses
@pytest.fixture(scope="module")
def sets_con():
    """neuron_sets with hand-made sets: run r1 two_stage A={(0,1),(0,2),(1,5)}, B={(0,2),(1,5),(2,7),(2,8)},
    C={(0,2)}, an older two_stage set of A that must be ignored, a stage1_only set, and a run r2 set."""
    t0, t1 = pd.Timestamp("2025-01-01"), pd.Timestamp("2025-01-02")
    rows = []
    def add(set_id, run, concept, method, neurons, when, n_candidates=10):
        params = json.dumps({"resolved": {"n_images": 4, "n_candidates": n_candidates, "n_selected": len(neurons),
                                          "threshold_a": 0.5, "threshold_g": 0.25}})
        rows.extend((set_id, run, concept, method, params, layer, u, 1.0, when) for layer, u in neurons)
    add("a-old", "r1", "A", "two_stage", [(5, 5)], t0)
    add("a", "r1", "A", "two_stage", [(0, 1), (0, 2), (1, 5)], t1, n_candidates=12)
    add("b", "r1", "B", "two_stage", [(0, 2), (1, 5), (2, 7), (2, 8)], t1)
    add("c", "r1", "C", "two_stage", [(0, 2)], t1)
    add("a1", "r1", "A", "stage1_only", [(0, 2), (3, 3), (3, 4)], t1)
    add("x", "r2", "A", "two_stage", [(0, 2)], t1)
    frame = pd.DataFrame(rows, columns=["set_id", "run_id", "concept", "method", "params_json", "layer", "unit",
                                        "score", "created_at"])
    con = duckdb.connect()
    con.register("sets_df", frame)
    con.execute("CREATE VIEW neuron_sets AS SELECT * EXCLUDE (layer, unit), CAST(layer AS SMALLINT) AS layer, "
                "CAST(unit AS SMALLINT) AS unit FROM sets_df")
    con.execute("CREATE VIEW set_choices AS SELECT * FROM (SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS concept, "
                "NULL::VARCHAR AS method, NULL::VARCHAR AS set_id, NULL::TIMESTAMPTZ AS chosen_at) WHERE false")
    queries.install_views(con)
    return con


ALL = {"run_id": None, "method": None, "min_concepts": None, "top": None}


def test_set_sizes(sets_con):
    rows = queries.run(sets_con, "set_sizes", {**ALL, "run_id": "r1", "method": "two_stage"}).to_pylist()
    assert [(r["concept"], r["set_id"], r["n_candidates"], r["n_selected"], r["n_images"]) for r in rows] == \
        [("A", "a", 12, 3, 4), ("B", "b", 10, 4, 4), ("C", "c", 10, 1, 4)]
    assert rows[0]["threshold_a"] == 0.5 and rows[0]["threshold_g"] == 0.25
    assert len(queries.run(sets_con, "set_sizes", ALL)) == 5


def test_layer_distribution(sets_con):
    rows = queries.run(sets_con, "layer_distribution", {**ALL, "run_id": "r1", "method": "two_stage"}).to_pylist()
    got = {(r["concept"], r["layer"]): (r["n_neurons"], r["share"]) for r in rows}
    assert got == {("A", 0): (2, 2 / 3), ("A", 1): (1, 1 / 3), ("B", 0): (1, 0.25), ("B", 1): (1, 0.25),
                   ("B", 2): (2, 0.5), ("C", 0): (1, 1.0)}


def test_concept_overlap(sets_con):
    rows = queries.run(sets_con, "concept_overlap", {**ALL, "run_id": "r1", "method": "two_stage"}).to_pylist()
    got = {(r["concept_a"], r["concept_b"]): (r["n_a"], r["n_b"], r["n_shared"], r["jaccard"]) for r in rows}
    assert got == {("A", "B"): (3, 4, 2, 2 / 5), ("A", "C"): (3, 1, 1, 1 / 3), ("B", "C"): (4, 1, 1, 1 / 4)}
    assert [r["jaccard"] for r in rows] == sorted((r["jaccard"] for r in rows), reverse=True)


def test_generic_neurons(sets_con):
    rows = queries.run(sets_con, "generic_neurons", {**ALL, "run_id": "r1", "method": "two_stage"}).to_pylist()
    assert [(r["layer"], r["unit"], r["n_concepts"], r["concepts"]) for r in rows] == \
        [(0, 2, 3, ["A", "B", "C"]), (1, 5, 2, ["A", "B"])]
    assert rows[0]["share_of_concepts"] == 1.0
    top1 = queries.run(sets_con, "generic_neurons", {**ALL, "run_id": "r1", "method": "two_stage", "top": 1,
                                                     "min_concepts": 1})
    assert top1.num_rows == 1
    every = queries.run(sets_con, "generic_neurons", {**ALL, "min_concepts": 1}).to_pylist()
    assert {(r["run_id"], r["method"]) for r in every} == {("r1", "two_stage"), ("r1", "stage1_only"),
                                                          ("r2", "two_stage")}
