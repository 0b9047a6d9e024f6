"""Includes of SQL fragments (`kneuron.queries.template`) and the current_members view."""
from __future__ import annotations

import re

import duckdb
import pytest

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.queries import template


def test_two_stage_has_each_threshold_block_once_per_stage():
    sql = queries.load("two_stage")
    for stage, pool, mean in (("a", "neurons", "mean_a"), ("g", "g_pool", "mean_g")):
        for cte in ("value", "knee_range", "knee_points", "knee_buckets", "knee", "auto", "sorted", "stats", "top",
                    "budget", "threshold"):
            assert len(re.findall(rf"^{stage}_{cte} AS \(", sql, re.MULTILINE)) == 1, (stage, cte)
        assert f"    FROM {pool}\n    WHERE {mean} > 0 AND ${stage}_kind = 'auto'" in sql
    assert "{{" not in sql and "-- include:" not in sql
    assert {f"{s}_{p}" for s in "ag" for p in ("kind", "value", "concepts", "values", "budget_max")} \
        <= set(queries.parameters(sql))


def test_both_stages_render_the_same_fragment():
    """Stage 1 and stage 2 differ in their prefix, their mean column and the relations they read, nothing else."""
    sql = queries.load("two_stage")
    a = sql[sql.index("a_value AS ("):sql.index("-- ----", sql.index("a_threshold AS ("))]
    g = sql[sql.index("g_value AS ("):sql.index("-- ----", sql.index("g_threshold AS ("))]
    a = re.sub(r"\ba_", "S_", a.replace("mean_a", "MEAN")).replace("FROM neurons", "FROM POOL")
    g = re.sub(r"\bg_", "S_", g.replace("mean_g", "MEAN")).replace("S_top_pool", "POOL").replace("S_pool", "POOL")
    assert a == g
    assert a.count("FROM POOL") == 4 and "neurons" not in a and "g_" not in g


def test_both_stages_score_and_pass_with_one_fragment():
    """Each stage's share, scored, edge and passed CTEs are written once (fragments/score_pass.sql); the stages
    differ in their prefix, their pool, their image rows and the name of the column that says a neuron passes."""
    sql = queries.load("two_stage")
    for stage in "ag":
        for cte in ("share", "scored", "edge", "passed"):
            assert len(re.findall(rf"^{stage}_{cte} AS \(", sql, re.MULTILINE)) == 1, (stage, cte)
    a = sql[sql.index("a_share AS ("):sql.index("-- ----", sql.index("a_passed AS ("))]
    g = sql[sql.index("g_share AS ("):sql.index("final_set AS (")]
    a = re.sub(r"\ba_|_a\b", "S", a.replace("FROM neurons", "FROM POOL").replace("FROM per_image", "FROM IMAGES"))
    g = re.sub(r"\bg_|_g\b", "S", g.replace("g_pool", "POOL").replace("g_images", "IMAGES"))
    assert a.replace("AS in_c", "AS PASSED") == g.replace("AS in_n", "AS PASSED")
    assert "FROM POOL AS n" in a and "FROM IMAGES AS p" in a and "AS PASSED" not in a
    raw = (queries.QUERY_DIR / "two_stage.sql").read_text(encoding="utf-8")
    assert not re.search(r"^[ag]_(share|scored|edge|passed) AS \(", raw, re.MULTILINE)


def test_overlap_and_generic_neurons_read_one_members_block():
    block = template.fragment("members", {})
    assert block.startswith("members AS (") and "current_members" in block
    for name in ("concept_overlap", "generic_neurons"):
        assert "members AS (" not in (queries.QUERY_DIR / f"{name}.sql").read_text(encoding="utf-8")
        assert queries.load(name).count(block) == 1, name


def test_a_file_takes_the_fragments_beside_it(tmp_path):
    assert queries.fragments_of(queries.QUERY_DIR / "two_stage.sql") == template.FRAGMENT_DIR
    assert queries.fragments_of(queries.QUERY_DIR / "views" / "current_sets.sql") == template.FRAGMENT_DIR
    assert queries.fragments_of(tmp_path / "q.sql") == tmp_path.resolve() / "fragments"
    assert queries.load_file(queries.QUERY_DIR / "two_stage.sql") == queries.load("two_stage")


@pytest.fixture()
def fragments(tmp_path, monkeypatch):
    (tmp_path / "pick.sql").write_text("-- pick.sql: {{unused}} in the header\n--\n\nSELECT {{what}}\n"
                                       "-- {{what}} from {{table}}\nFROM {{table}}\n")
    monkeypatch.setattr(template, "FRAGMENT_DIR", tmp_path)
    return tmp_path


def test_render_replaces_include_lines(fragments):
    sql = "WITH x AS (\n-- include: pick what=a table=t\n)\nSELECT 1"
    assert template.render(sql) == "WITH x AS (\nSELECT a\n-- a from t\nFROM t\n)\nSELECT 1"
    assert template.render("SELECT 1 -- include: pick what=a") == "SELECT 1 -- include: pick what=a"


def test_render_refuses_bad_includes(fragments):
    with pytest.raises(KneuronError, match=r"^unknown SQL fragment 'nope' \(no file .*nope\.sql\)$"):
        template.render("-- include: nope a=b")
    with pytest.raises(KneuronError, match=r"^SQL fragment 'pick': no value for table$"):
        template.render("-- include: pick what=a")
    with pytest.raises(KneuronError, match=r"^SQL fragment 'pick': no placeholder for extra$"):
        template.render("-- include: pick what=a table=t extra=1")


def members_con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE neuron_sets AS SELECT * FROM (VALUES "
                "('s-old', 'r1', 'A', 'two_stage', '{}', 0::INT2, 9::INT2, 1.0::FLOAT, '2026-01-01'),"
                "('s-new', 'r1', 'A', 'two_stage', '{}', 1::INT2, 2::INT2, 1.0::FLOAT, '2026-01-02'),"
                "('s-new', 'r1', 'A', 'two_stage', '{}', 3::INT2, 4::INT2, 0.5::FLOAT, '2026-01-02'),"
                "('t', 'r1', 'B', 'two_stage', '{}', 1::INT2, 2::INT2, 2.0::FLOAT, '2026-01-01')"
                ") AS v(set_id, run_id, concept, method, params_json, layer, unit, score, created_at)")
    con.execute("ALTER TABLE neuron_sets ALTER created_at TYPE TIMESTAMPTZ")
    con.execute("CREATE TABLE set_choices (run_id VARCHAR, concept VARCHAR, method VARCHAR, set_id VARCHAR, "
                "chosen_at TIMESTAMPTZ)")
    return con


def test_current_members_are_the_rows_of_the_current_sets():
    con = members_con()
    queries.install_views(con)
    rows = con.execute("SELECT set_id, layer, unit FROM current_members ORDER BY ALL").fetchall()
    assert rows == [("s-new", 1, 2), ("s-new", 3, 4), ("t", 1, 2)]
    con.execute("INSERT INTO set_choices VALUES ('r1', 'A', 'two_stage', 's-old', '2026-01-03')")
    assert con.execute("SELECT set_id, layer, unit FROM current_members ORDER BY ALL").fetchall() == \
        [("s-old", 0, 9), ("t", 1, 2)]


def test_a_query_over_current_members_gets_the_view_it_reads():
    con = members_con()  # no derived view yet: run creates current_sets before current_members
    rows = queries.run(con, "layer_distribution", {"run_id": "r1", "method": None}).to_pylist()
    assert [(r["set_id"], r["layer"], r["n_neurons"], r["share"]) for r in rows] == \
        [("s-new", 1, 1, 0.5), ("s-new", 3, 1, 0.5), ("t", 1, 1, 1.0)]
