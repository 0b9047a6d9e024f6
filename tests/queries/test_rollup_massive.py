"""``queries/massive_units.sql`` read from the rollup's |o_mean| sums: the same rows, bit for bit, as averaging the
image rows (the query as it was before the rollup carried those sums), on random warehouses with and without a
rollup, with rollup files written before ``sum_abs_o_mean`` existed, and after compaction."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

import tests.warehouse.test_rollup as base
from kneuron import queries
from kneuron.warehouse import Warehouse, rollup_rows, schema
from kneuron.warehouse.compact import compact
from kneuron.warehouse.connect import table_paths
from kneuron.warehouse.rollup import merge_rollups

#: the per-image definition: massive_units.sql before the rollup carried sum_abs_o_mean (with its rule: k x the
#: median magnitude and beyond the Tukey far-out fence of the log magnitudes)
FROM_IMAGE_ROWS = """
WITH ident AS (
    SELECT DISTINCT run_id, concept, image_id FROM samples
    WHERE status = 'ok' AND ($run_id IS NULL OR run_id = $run_id)
      AND NOT EXISTS (SELECT 1 FROM splits AS e WHERE e.run_id = samples.run_id AND e.split = 'eval'
                        AND e.concept = samples.concept AND e.image_id = samples.image_id)),
magnitude AS (
    SELECT s.run_id, s.layer, s.unit, avg(abs(CAST(s.o_mean AS DOUBLE))) AS magnitude, count(*) AS n_pairs
    FROM neuron_stats AS s
    SEMI JOIN ident AS i ON i.run_id = s.run_id AND i.concept = s.concept AND i.image_id = s.image_id
    WHERE $run_id IS NULL OR s.run_id = $run_id
    GROUP BY s.run_id, s.layer, s.unit),
typical AS (SELECT run_id, median(magnitude) AS median_magnitude,
                   quantile_cont(ln(magnitude), 0.75) FILTER (WHERE magnitude > 0) AS log_q3,
                   quantile_cont(ln(magnitude), 0.25) FILTER (WHERE magnitude > 0) AS log_q1
            FROM magnitude GROUP BY run_id)
SELECT m.run_id, r.model_name, m.layer, m.unit, m.magnitude, t.median_magnitude,
       m.magnitude / NULLIF(t.median_magnitude, 0) AS ratio, m.n_pairs
FROM magnitude AS m JOIN typical AS t ON t.run_id = m.run_id LEFT JOIN runs AS r ON r.run_id = m.run_id
WHERE m.magnitude > COALESCE(CAST($k AS DOUBLE), 10.0) * t.median_magnitude
  AND ln(m.magnitude) > t.log_q3 + 3 * (t.log_q3 - t.log_q1)
ORDER BY m.run_id, ratio DESC, m.layer, m.unit
"""

OLD_ROLLUP = dataclasses.replace(
    schema.NEURON_ROLLUP, schema=schema.NEURON_ROLLUP.schema.remove(
        schema.NEURON_ROLLUP.schema.get_field_index("sum_abs_o_mean")))


#: the rule's second condition; without it, k = 0 flags every unit with a magnitude > 0 (so that the magnitudes
#: of every unit are compared, not only of the few far-out ones)
FENCE = "  AND ln(m.magnitude) > t.log_q3 + 3 * (t.log_q3 - t.log_q1)\n"


def both(root: Path, k: float | None, run_id: str | None = None) -> tuple[list, list]:
    """(massive_units.sql, the image-row definition) on ``root``."""
    con = queries.connect(root)
    params = {"run_id": run_id, "k": k}
    return queries.run(con, "massive_units", params).to_pylist(), con.execute(FROM_IMAGE_ROWS, params).fetchall()


def unfenced(con, k: float | None = 0.0, run_id: str | None = None, install: bool = True) -> list[dict]:  # noqa: ANN001
    """massive_units.sql without the fence condition, on ``con`` (``install``: first the derived views it reads,
    by running the query once)."""
    sql = queries.load("massive_units")
    assert FENCE in sql
    if install:
        queries.run(con, "massive_units", {"run_id": run_id, "k": k})
    return queries.execute(con, sql.replace(FENCE, ""), {"run_id": run_id, "k": k}).to_pylist()


def every_unit(root: Path) -> tuple[list, list]:
    """(massive_units.sql, the image-row definition) at k = 0 without the fence: every unit's magnitude."""
    con = queries.connect(root)
    params = {"run_id": None, "k": 0.0}
    return unfenced(con), con.execute(FROM_IMAGE_ROWS.replace(FENCE, ""), params).fetchall()


def rows(table: list[dict]) -> list[tuple]:
    return [tuple(row.values()) for row in table]


def write_old_world(root: Path, world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """``world`` written with the rollup schema from before ``sum_abs_o_mean`` (its files lack the column)."""
    def old_rollup_rows(stats: pa.Table) -> pa.Table:
        schema.TABLES["neuron_rollup"] = schema.NEURON_ROLLUP  # today's sums, less the new column
        try:
            return rollup_rows(stats).drop_columns(["sum_abs_o_mean"])
        finally:
            schema.TABLES["neuron_rollup"] = OLD_ROLLUP

    with monkeypatch.context() as patch:
        patch.setitem(schema.TABLES, "neuron_rollup", OLD_ROLLUP)
        patch.setattr(base, "rollup_rows", old_rollup_rows)
        base.write_world(root, world, strays=False)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=base.worlds())
def test_massive_units_from_the_rollup_equal_the_image_rows(world: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "wh"
        base.write_world(root, world, strays=True)
        for k, run_id in ((None, None), (1.0, None), (0.0, base.RUN)):
            from_rollup, from_rows = both(root, k, run_id)
            assert rows(from_rollup) == from_rows  # bit for bit: the float64 sums of float16 values are exact


WORLD = {"seed": 3, "plan": [("dog", ["ok"] * 6 + ["skipped"], 3, [True] * 8, 2),
                             ("cat", ["ok", "skipped", "ok", "ok"], 2, [True, False] + [True] * 6, 1),
                             ("traffic light", ["ok"] * 5, 2, [True] * 8, 0)]}


def test_the_rollup_carries_the_sums_and_massive_units_reads_them(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    base.write_world(root, WORLD, strays=False)
    con = queries.connect(root)
    sums = con.sql("SELECT concept, layer, unit, sum(sum_abs_o_mean) FROM neuron_rollup GROUP BY ALL ORDER BY ALL")
    by_rows = con.sql("SELECT concept, layer, unit, sum(abs(CAST(o_mean AS DOUBLE))) FROM neuron_stats "
                      "WHERE concept <> 'cat' GROUP BY ALL ORDER BY ALL")
    assert [r for r in sums.fetchall() if r[0] != "cat"] == by_rows.fetchall()
    for k in (None, 1.0, 0.0):
        from_rollup, from_rows = both(root, k)
        assert rows(from_rollup) == from_rows
    from_rollup, from_rows = every_unit(root)
    assert rows(from_rollup) == from_rows and len(from_rows) == base.N_LAYERS * base.D_FF


def test_rollup_files_from_before_the_column_read_as_null_and_fall_back_to_image_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wh"
    write_old_world(root, WORLD, monkeypatch)
    files = table_paths(root, "neuron_rollup")
    assert files and all("sum_abs_o_mean" not in pq.read_schema(path).names for path in files)
    con = queries.connect(root)
    assert con.sql("SELECT count(*), count(sum_abs_o_mean) FROM neuron_rollup").fetchall()[0][1] == 0
    assert con.sql("SELECT count(*) FROM neuron_rollup_parts").fetchall() != [(0,)]  # the means still use it
    assert con.sql("SELECT * FROM neuron_means ORDER BY ALL").fetchall() == con.sql(base.PER_IMAGE).fetchall()
    for k in (None, 1.0, 0.0):
        from_rollup, from_rows = both(root, k)
        assert rows(from_rollup) == from_rows
    from_rollup, from_rows = every_unit(root)
    assert rows(from_rollup) == from_rows and len(from_rows) == base.N_LAYERS * base.D_FF


def test_old_and_new_rollup_files_together_and_after_compaction(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "wh"
    write_old_world(root, {"seed": 1, "plan": [("dog", ["ok"] * 4, 2, [True] * 8, 1)]}, monkeypatch)
    with Warehouse.open(root, create=True) as wh:  # a later ingest of the same concept with today's rollup
        stats = base.stats_rows("dog", [10, 11], np.random.default_rng(9))
        with wh.batch() as batch:
            batch.add("samples", {"run_id": [base.RUN] * 2, "concept": ["dog"] * 2, "image_id": [10, 11],
                                  "file_name": ["10.png", "11.png"], "status": ["ok", "ok"]})
            batch.add("splits", {"run_id": [base.RUN] * 2, "concept": ["dog"] * 2, "image_id": [10, 11],
                                 "split": ["ident", "ident"]})
            batch.add("neuron_stats", stats)
            batch.add("neuron_rollup", rollup_rows(stats))
    con = queries.connect(root)
    assert con.sql("SELECT count(sum_abs_o_mean) > 0, count(*) > count(sum_abs_o_mean) "
                   "FROM neuron_rollup").fetchall() == [(True, True)]
    for k in (None, 0.0):
        from_rollup, from_rows = both(root, k)
        assert rows(from_rollup) == from_rows
    from_rollup, from_rows = every_unit(root)
    assert rows(from_rollup) == from_rows and len(from_rows) == base.N_LAYERS * base.D_FF
    compact(root)
    con = queries.connect(root)
    assert con.sql("SELECT count(*) FROM neuron_rollup_summed WHERE sum_abs_o_mean IS NULL").fetchall() == [
        (base.N_LAYERS * base.D_FF,)]  # merged with an older part: no sum, so the image rows are read
    for k in (None, 0.0):
        from_rollup, from_rows = both(root, k)
        assert rows(from_rollup) == from_rows
    from_rollup, from_rows = every_unit(root)
    assert rows(from_rollup) == from_rows and len(from_rows) == base.N_LAYERS * base.D_FF


def test_merging_rollups_keeps_a_missing_sum_missing() -> None:
    stats = base.stats_rows("dog", [0, 1], np.random.default_rng(0))
    new = rollup_rows(stats)
    old = new.set_column(new.schema.get_field_index("sum_abs_o_mean"), "sum_abs_o_mean",
                         pa.nulls(new.num_rows, pa.float64()))
    assert merge_rollups([new, new]).column("sum_abs_o_mean").null_count == 0
    assert merge_rollups([new, old]).column("sum_abs_o_mean").null_count == new.num_rows


def test_a_complete_rollup_with_sums_is_read_without_the_image_rows(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "D_FF", 700)  # 2100 image rows per image: many DuckDB vectors
    root = tmp_path / "wh"
    base.write_world(root, {"seed": 2, "plan": [("dog", ["ok"] * 8, 4, [True] * 8, 1)]}, strays=False)
    con = queries.connect(root, read_only=False)
    con.execute("SET threads = 1")
    expected = unfenced(con)
    seen: list[int] = []

    def record(image_id: int) -> int:
        seen.append(image_id)
        return image_id

    con.create_function("seen", record, ["BIGINT"], "BIGINT", side_effects=True)
    files = table_paths(root, "neuron_stats")
    con.execute(f"CREATE OR REPLACE TEMP VIEW neuron_stats AS SELECT * REPLACE (seen(image_id) AS image_id) "
                f"FROM read_parquet({files!r})")
    assert unfenced(con, install=False) == expected
    assert len(expected) == base.N_LAYERS * 700
    total = con.sql("SELECT count(*) FROM read_parquet(?)", params=[files]).fetchall()[0][0]
    assert total == 8 * base.N_LAYERS * 700 and len(seen) <= 2048  # at most the first vector, then it stops
