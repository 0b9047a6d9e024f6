"""The ``neuron_rollup`` table and the ``neuron_means`` view: on random warehouses (hypothesis), the view's means are
exactly the per-image aggregation that two_stage.sql's mean path computes, whether a partition's rollup is
complete, partial or missing (old warehouses), before and after `kneuron compact`; and two_stage.sql (whose mean
path reads the view) selects the same sets from a warehouse's rollup as from its image rows alone (the same
warehouse with its rollup views emptied, so that ``neuron_means`` averages the image rows)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kneuron import queries
from kneuron.queries.selection import SelectionConfig, ThresholdSpec, run_selection
from kneuron.warehouse import Warehouse, rollup_rows
from kneuron.warehouse.compact import compact
from tests.helpers.warehouse_rows import run_row

RUN = "run-1"
N_LAYERS, D_FF = 3, 7
VALUES = ("o_mean", "i_mean", "d_max", "g_max", "g_mean")

#: the per-image definition of two_stage.sql's mean path (its ok_images + per_image + neurons CTEs)
PER_IMAGE = """
WITH ok_images AS (
    SELECT DISTINCT run_id, concept, image_id FROM samples
    WHERE status = 'ok' AND NOT EXISTS (SELECT 1 FROM splits AS e WHERE e.run_id = samples.run_id
        AND e.split = 'eval' AND e.concept = samples.concept AND e.image_id = samples.image_id))
SELECT s.run_id, s.concept, s.layer, s.unit, count(*) AS n_images,
       avg(CAST(s.d_max AS DOUBLE)), avg(CAST(s.d_mean AS DOUBLE)),
       avg(CAST(s.g_max AS DOUBLE)), avg(CAST(s.g_mean AS DOUBLE))
FROM neuron_stats AS s SEMI JOIN ok_images AS o
    ON o.run_id = s.run_id AND o.concept = s.concept AND o.image_id = s.image_id
GROUP BY ALL ORDER BY ALL
"""

# ---------------------------------------------------------------------------------------------- the switch
def without_rollup(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """``con`` with its rollup views replaced by the stand-ins of a warehouse without a rollup
    (`queries.ROLLUP_STAND_INS`: no rollup rows, every image row unrolled), so ``neuron_means`` averages the
    image rows."""
    for view, select in queries.ROLLUP_STAND_INS.items():
        con.execute(f"CREATE OR REPLACE VIEW {view} AS {select}")
    return con


# ---------------------------------------------------------------------------------------------- random warehouses
@st.composite
def worlds(draw: st.DrawFn) -> dict:
    """Concepts with ok, skipped and eval images, grouped into batches that do or do not carry their rollup."""
    concepts = draw(st.lists(st.sampled_from(["dog", "cat", "traffic light"]), min_size=1, max_size=3, unique=True))
    seed = draw(st.integers(0, 2**32 - 1))
    plan = []
    for concept in concepts:
        n = draw(st.integers(1, 8))
        status = draw(st.lists(st.sampled_from(["ok", "ok", "ok", "skipped"]), min_size=n, max_size=n))
        batch_size = draw(st.integers(1, 4))
        rolled = draw(st.lists(st.booleans(), min_size=8, max_size=8))  # per batch: does it carry its rollup?
        evals = draw(st.integers(0, 2))
        plan.append((concept, status, batch_size, rolled, evals))
    return {"seed": seed, "plan": plan}


def stats_rows(concept: str, image_ids: list[int], rng: np.random.Generator) -> pa.Table:
    n = len(image_ids) * N_LAYERS * D_FF
    scale = rng.choice([0.0, 1e-5, 1.0, 300.0, 2e4], size=n)  # zeros, subnormal float16s, large values, ties
    columns = {"run_id": [RUN] * n, "concept": [concept] * n,
               "image_id": np.repeat(np.asarray(image_ids, dtype=np.int64), N_LAYERS * D_FF),
               "layer": np.tile(np.repeat(np.arange(N_LAYERS), D_FF), len(image_ids)),
               "unit": np.tile(np.arange(D_FF), N_LAYERS * len(image_ids))}
    for name in VALUES:
        columns[name] = (np.round(rng.standard_normal(n), 1) * scale).astype(np.float32)
    return pa.table(columns)


def write_world(root: Path, world: dict, *, strays: bool) -> None:
    """The world as ingest writes it: per batch samples + neuron_stats (+ rollup where the plan says). With
    ``strays``, partitions without any rollup also get image rows of skipped and eval images (which the
    per-image path must leave out)."""
    rng = np.random.default_rng(world["seed"])
    with Warehouse.open(root, create=True) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row(RUN))
            split = {"run_id": [], "concept": [], "image_id": [], "split": []}
            for concept, status, _, _, evals in world["plan"]:
                for image_id in [*range(len(status)), *range(100, 100 + evals)]:
                    split["run_id"].append(RUN)
                    split["concept"].append(concept)
                    split["image_id"].append(image_id)
                    split["split"].append("ident" if image_id < 100 else "eval")
            batch.add("splits", split)
        for concept, status, size, rolled, evals in world["plan"]:
            no_rollup = not any(rolled[: (len(status) + size - 1) // size])
            for k, start in enumerate(range(0, len(status), size)):
                ids = list(range(start, min(start + size, len(status))))
                ok = [i for i in ids if status[i] == "ok"]
                with wh.batch() as batch:
                    batch.add("samples", {
                        "run_id": [RUN] * len(ids), "concept": [concept] * len(ids), "image_id": ids,
                        "file_name": [f"{i}.png" for i in ids], "status": [status[i] for i in ids],
                        "skip_reason": [None if status[i] == "ok" else "empty mask" for i in ids]})
                    recorded = ids if (strays and no_rollup) else ok
                    if recorded:
                        stats = stats_rows(concept, recorded, rng)
                        batch.add("neuron_stats", stats)
                        if rolled[k]:
                            batch.add("neuron_rollup", rollup_rows(stats))
            if strays and no_rollup and evals:
                with wh.batch() as batch:
                    batch.add("neuron_stats", stats_rows(concept, list(range(100, 100 + evals)), rng))


def means(root: Path) -> tuple[list, list]:
    con = queries.connect(root)
    return con.sql("SELECT * FROM neuron_means ORDER BY ALL").fetchall(), con.sql(PER_IMAGE).fetchall()


# ---------------------------------------------------------------------------------------------- properties
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds())
def test_neuron_means_are_the_per_image_means_exactly(world: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "wh"
        write_world(root, world, strays=True)
        view, per_image = means(root)
        assert view == per_image  # bit for bit: the float64 sums of float16 values are exact


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds())
def test_compaction_completes_the_rollup_and_keeps_the_means(world: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "wh"
        write_world(root, world, strays=False)
        before, per_image = means(root)
        compact(root)
        con = queries.connect(root)
        assert con.sql("SELECT count(*) FROM neuron_stats_unrolled").fetchall() == [(0,)]
        after, per_image_after = means(root)
        assert before == per_image == after == per_image_after


# ---------------------------------------------------------------------------------------------- the switch
SELECTIONS = [
    SelectionConfig(run_id=RUN),
    SelectionConfig(run_id=RUN, reduce="mean"),
    SelectionConfig(run_id=RUN, stage1=ThresholdSpec("quantile", 0.8), stage2=ThresholdSpec("budget", 3)),
    SelectionConfig(run_id=RUN, stage1=ThresholdSpec("absolute", 0.0), stage2_pool="all", concepts=("dog",)),
    SelectionConfig(run_id=RUN, aggregate="share", min_share=0.5),
]


@pytest.mark.parametrize("config", SELECTIONS, ids=lambda c: f"{c.aggregate}-{c.reduce}-{c.stage1.kind}")
def test_two_stage_selects_the_same_sets_from_the_rollup_as_from_the_image_rows(tmp_path: Path, config) -> None:
    world = {"seed": 5, "plan": [("dog", ["ok"] * 6 + ["skipped"], 3, [True, False, True] + [True] * 5, 2),
                                 ("cat", ["ok", "skipped", "ok", "ok"], 2, [False] * 8, 1),
                                 ("traffic light", ["ok"] * 5, 2, [True] * 8, 0)]}
    root = tmp_path / "wh"
    write_world(root, world, strays=True)
    rows_con = without_rollup(queries.connect(root))
    assert rows_con.sql("SELECT count(*) FROM neuron_rollup_parts").fetchall() == [(0,)]
    assert rows_con.sql("SELECT * FROM neuron_means ORDER BY ALL").fetchall() == rows_con.sql(PER_IMAGE).fetchall()
    rolled_con = queries.connect(root)
    assert rolled_con.sql("SELECT count(*) FROM neuron_rollup_parts").fetchall() != [(0,)]  # the rollup is read
    from_rows = run_selection(rows_con, config)
    from_rollup = run_selection(rolled_con, config)
    assert from_rollup.summary.equals(from_rows.summary)
    drop = ["created_at"]
    assert from_rollup.neuron_sets.drop_columns(drop).equals(from_rows.neuron_sets.drop_columns(drop))
    assert from_rows.summary.num_rows > 0


@settings(max_examples=40, deadline=None)
@given(n_images=st.integers(1, 5), shuffle=st.booleans(), drop=st.integers(0, 3), seed=st.integers(0, 1000))
def test_the_numpy_path_of_rollup_rows_equals_the_group_by(n_images: int, shuffle: bool, drop: int, seed: int,
                                                            ) -> None:
    """Ingest's layout takes the reshape path; shuffled rows or missing neurons take the group-by; same sums."""
    from kneuron.warehouse import rollup

    rng = np.random.default_rng(seed)
    table = stats_rows("dog", list(rng.choice(50, n_images, replace=False)), rng)
    if shuffle:
        table = table.take(rng.permutation(table.num_rows))
    if drop:
        table = table.slice(drop)
    fast = rollup_rows(table)
    real = rollup._image_blocks
    try:
        rollup._image_blocks = lambda rows: None
        slow = rollup_rows(table)
    finally:
        rollup._image_blocks = real
    # NaN where a float16 inf meets inf (d_mean = o_mean - i_mean) on both paths: compare NaN-aware
    assert fast.schema == slow.schema and fast.to_pandas().equals(slow.to_pandas())
