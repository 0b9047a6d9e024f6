"""`kneuron sql`: formats, bound parameters, bundled queries, read-only statements only, the one-line error."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kneuron import queries, warehouse
from kneuron.queries.selection import SelectionConfig, run_selection
from tests.helpers.cli_runner import run_cli
from tests.helpers.signal_world import build_warehouse, make_world

PER_CONCEPT = "SELECT concept, count(*) AS n, min(image_id) AS first FROM samples WHERE run_id = 'r1' " \
              "GROUP BY concept ORDER BY concept"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    stats, samples = make_world(seed=3, n_images=4, n_layers=2, n_units=30)
    path = tmp_path_factory.mktemp("sqlwh") / "wh"
    build_warehouse(path, stats, samples)
    with warehouse.connect(path) as con:
        selection = run_selection(con, SelectionConfig(run_id="r1"))
    with warehouse.Warehouse.open(path, create=True) as wh, wh.batch() as batch:
        batch.add("neuron_sets", selection.neuron_sets)
    return path


def sql(root, capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(["sql", "--warehouse", str(root), *args], capsys)


def test_table_format_is_duckdb_box_drawing(root, capsys):
    code, out, err = sql(root, capsys, PER_CONCEPT)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("┌") and "concept" in lines[1] and "varchar" in lines[2]
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines if line.startswith("│ ")]
    assert rows[-3:] == [["dog", "4", "100"], ["it's", "4", "100"], ["traffic light", "4", "100"]]


def test_csv_and_json_formats(root, capsys):
    code, out, _ = sql(root, capsys, PER_CONCEPT, "--format", "csv")
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [["concept", "n", "first"], ["dog", "4", "100"],
                                                  ["it's", "4", "100"], ["traffic light", "4", "100"]]
    code, out, _ = sql(root, capsys, PER_CONCEPT, "--format", "json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"concept": "dog", "n": 4, "first": 100}, {"concept": "it's", "n": 4, "first": 100},
        {"concept": "traffic light", "n": 4, "first": 100}]
    code, out, _ = sql(root, capsys, "SELECT [1, 2] AS l, NULL AS x, 'a,b' AS s, 'nan'::DOUBLE AS f",
                       "--format", "csv")
    assert list(csv.reader(io.StringIO(out))) == [["l", "x", "s", "f"], ["[1, 2]", "", "a,b", "nan"]]
    code, out, _ = sql(root, capsys, "SELECT 'nan'::DOUBLE AS f, TIMESTAMP '2025-01-02 03:04:05' AS t",
                       "--format", "json")
    assert json.loads(out) == {"f": None, "t": "2025-01-02T03:04:05"}


def test_parquet_needs_output_and_round_trips(root, tmp_path, capsys):
    code, out, err = sql(root, capsys, PER_CONCEPT, "--format", "parquet")
    assert (code, out, err) == (2, "", "kneuron: error: --format parquet needs --out FILE\n")
    target = tmp_path / "r.parquet"
    code, _, err = sql(root, capsys, PER_CONCEPT, "--format", "parquet", "--out", str(target))
    assert code == 0 and err == f"wrote 3 rows to {target}\n"
    assert pq.read_table(target).to_pylist()[1] == {"concept": "it's", "n": 4, "first": 100}


def test_output_file_and_sql_file(root, tmp_path, capsys):
    query = tmp_path / "q.sql"
    query.write_text("-- a comment with $not_a_param\n" + PER_CONCEPT + ";\n", encoding="utf-8")
    target = tmp_path / "out.csv"
    code, out, _ = sql(root, capsys, "-f", str(query), "--format", "csv", "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text(encoding="utf-8").splitlines()[1] == "dog,4,100"


#: every parameter of two_stage.sql, as `kneuron sql -p` binds them (lists as text that DuckDB casts)
TWO_STAGE = [arg for pair in (
    "run_id=r1", "concepts=[]", "reduce=max", "aggregate=mean", "min_share=0.5", "g_pool=candidates",
    "a_kind=auto", "a_value=0", "a_concepts=[]", "a_values=[]", "a_budget_max=0", "g_kind=budget", "g_value=2",
    "g_concepts=[]", "g_values=[]", "g_budget_max=2", "s_kind=none", "s_stage=g", "s_ratio=1",
    "s_scope=final", "s_keep_all=false", "x_layers=[]", "x_units=[]") for arg in ("-p", pair)]


def test_a_bundled_query_file_runs_as_the_named_query(root, capsys):
    """`-f queries/two_stage.sql` expands the file's include lines (the bundled fragments) exactly as `-q`."""
    path = queries.QUERY_DIR / "two_stage.sql"
    assert "\n-- include: threshold " in path.read_text(encoding="utf-8")
    code, named, err = sql(root, capsys, "-q", "two_stage", *TWO_STAGE, "--format", "csv")
    assert (code, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(named)))
    assert len(rows) == 6 and {r["n_selected"] for r in rows} == {"2"}  # top 2 of each of the 3 concepts
    code, from_file, err = sql(root, capsys, "-f", str(path), *TWO_STAGE, "--format", "csv")
    assert (code, err) == (0, "")
    assert from_file == named


def test_a_query_file_includes_the_fragments_beside_it(root, tmp_path, capsys):
    (tmp_path / "fragments").mkdir()
    (tmp_path / "fragments" / "counted.sql").write_text(
        "-- counted.sql: images per concept of {{table}}\n"
        "counted AS (\n    SELECT concept, count(*) AS n FROM {{table}} WHERE run_id = $run_id GROUP BY concept\n),\n",
        encoding="utf-8")
    query = tmp_path / "q.sql"
    query.write_text("WITH\n-- include: counted table=samples\nSELECT concept, n FROM counted ORDER BY concept\n",
                     encoding="utf-8")
    code, out, err = sql(root, capsys, "-f", str(query), "-p", "run_id=r1", "--format", "csv")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["concept,n", "dog,4", "it's,4", "traffic light,4"]
    elsewhere = tmp_path / "elsewhere" / "q.sql"  # no fragments/ beside it: the include is an error
    elsewhere.parent.mkdir()
    elsewhere.write_text(query.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = sql(root, capsys, "-f", str(elsewhere), "-p", "run_id=r1")
    assert (code, out) == (2, "")
    assert err == (f"kneuron: error: unknown SQL fragment 'counted' (no file "
                   f"{elsewhere.parent.resolve() / 'fragments' / 'counted.sql'})\n")


def test_parameters_are_bound(root, capsys):
    code, out, _ = sql(root, capsys, "SELECT count(*) AS n FROM samples WHERE concept = $c AND image_id > $i",
                       "-p", "c=it's", "-p", "i=102", "--format", "csv")
    assert (code, out) == (0, "n\n2\n")  # image 103 of runs r1 and r2
    code, out, err = sql(root, capsys, "SELECT $a AS a", "-p", "b=1")
    assert (code, err) == (2, "kneuron: error: --param b: the SQL has no such parameter (it has $a)\n")


def test_bundled_query_reads_the_stored_sets(root, capsys):
    code, out, _ = sql(root, capsys, "-q", "set_sizes", "-p", "method=two_stage", "--format", "json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    with warehouse.connect(root) as con:
        expected = con.sql("SELECT concept, count(*) AS n FROM neuron_sets WHERE method = 'two_stage' "
                           "GROUP BY concept ORDER BY concept").fetchall()
    assert [(r["concept"], r["n_selected"]) for r in rows] == expected
    assert all(r["n_candidates"] >= r["n_selected"] > 0 and r["n_images"] == 3 for r in rows)


@pytest.mark.parametrize("statement,message", [
    ("SELEC 1", 'SQL error: Parser Error: syntax error at or near "SELEC"'),
    ("SELECT * FROM no_such_table", "SQL error: Catalog Error: Table with name no_such_table does not exist!"),
    ("SELECT CAST('x' AS INTEGER)", "SQL error: Conversion Error: Could not convert string 'x' to INT32"),
])
def test_sql_error_is_one_line_and_exit_2(root, capsys, statement, message):
    code, out, err = sql(root, capsys, statement)
    assert (code, out) == (2, "")
    assert err == f"kneuron: error: {message}\n"


def stored_state(root: Path) -> tuple[dict[str, str], dict[str, list]]:
    """(sha256 of every file under the warehouse, every view's rows): what a refused statement must not change."""
    digests = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".writer.lock"}
    with warehouse.connect(root) as con:
        rows = {table: con.sql(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall() for table in warehouse.TABLES}
    return digests, rows


def test_views_are_read_only(root, tmp_path, capsys):
    target = tmp_path / "leak.csv"
    code, out, err = sql(root, capsys, f"COPY (SELECT 1) TO '{target}'")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("kneuron: error: read-only SQL: refused COPY statement")
    assert not target.exists()
    code, out, err = sql(root, capsys, "DROP VIEW samples")  # view DDL is refused too
    assert (code, out) == (2, "") and err.startswith("kneuron: error: read-only SQL: refused DROP statement")
    code, out, _ = sql(root, capsys, "SELECT count(*) AS n FROM samples", "--format", "csv")
    assert (code, out) == (0, "n\n24\n")
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    for reader in ("read_csv", "read_text", "read_parquet"):  # a SELECT reads the committed files only
        code, out, err = sql(root, capsys, f"SELECT * FROM {reader}('{outside}')")
        assert (code, out) == (2, "") and err.startswith("kneuron: error: SQL error: Permission Error:")


def test_copy_over_a_committed_file_is_refused_and_changes_nothing(root, capsys):
    committed = warehouse.table_paths(root, "samples")[0]
    before = stored_state(root)
    code, out, err = sql(root, capsys, f"COPY (SELECT 1 AS x) TO '{committed}' (USE_TMP_FILE false)")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("kneuron: error: read-only SQL: refused COPY statement `COPY (SELECT 1 AS x) TO ")
    assert stored_state(root) == before


WRITES = [
    ("COPY", "COPY samples TO '{tmp}/x.csv'"),
    ("COPY", "COPY (SELECT 1 AS x) TO '{committed}' (USE_TMP_FILE false)"),
    ("COPY", "COPY samples FROM '{tmp}/x.csv'"),
    ("CREATE", "CREATE TABLE t AS SELECT 1 AS x"),
    ("CREATE", "CREATE OR REPLACE VIEW samples AS SELECT 1 AS x"),
    ("CREATE", "CREATE MACRO m(a) AS a"),
    ("CREATE", "CREATE SECRET (TYPE s3)"),
    ("DROP", "DROP VIEW samples"),
    ("DROP", "DROP TABLE IF EXISTS t"),
    ("ALTER", "ALTER VIEW samples RENAME TO s2"),
    ("INSERT", "INSERT INTO samples SELECT * FROM samples"),
    ("UPDATE", "UPDATE samples SET status = 'ok'"),
    ("DELETE", "DELETE FROM samples"),
    ("MERGE_INTO", "MERGE INTO samples USING samples AS s ON false WHEN MATCHED THEN DELETE"),
    ("ATTACH", "ATTACH '{tmp}/evil.duckdb'"),
    ("DETACH", "DETACH memory"),
    ("LOAD", "INSTALL httpfs"),
    ("LOAD", "LOAD httpfs"),
    ("SET", "SET enable_external_access = true"),
    ("SET", "SET allowed_directories = ['/']"),
    ("SET", "RESET threads"),
    ("SET", "PRAGMA threads = 1"),
    ("SET", "USE memory"),
    ("EXPORT", "EXPORT DATABASE '{tmp}/export'"),
    ("PRAGMA", "IMPORT DATABASE '{tmp}/export'"),
    ("PRAGMA", "PRAGMA enable_profiling"),
    ("CALL", "CALL pragma_version()"),
    ("CALL", "CHECKPOINT"),
    ("PREPARE", "PREPARE p AS SELECT 1"),
    ("EXECUTE", "EXECUTE p"),
    ("TRANSACTION", "BEGIN TRANSACTION"),
    ("VACUUM", "VACUUM"),
    ("MULTI", "PIVOT samples ON status"),
    ("EXPLAIN", "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/x.csv'"),
    ("EXPLAIN", "EXPLAIN (FORMAT json) DROP VIEW samples"),
    ("DROP", "SELECT 1; DROP VIEW samples"),  # nothing runs unless every statement reads
]


@pytest.mark.parametrize("kind,statement", WRITES, ids=[w[1].split("'")[0][:40] for w in WRITES])
def test_every_write_statement_kind_is_refused_with_exit_2(root, tmp_path, capsys, kind, statement):
    committed = warehouse.table_paths(root, "samples")[0]
    text = statement.format(tmp=tmp_path, committed=committed)
    code, out, err = sql(root, capsys, text)
    assert (code, out) == (2, ""), err
    assert err.startswith(f"kneuron: error: read-only SQL: refused {kind} statement `") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


READS = [
    ("SELECT count(*) AS n FROM samples", "n\n24\n"),
    ("WITH s AS (SELECT * FROM samples) SELECT count(*) AS n FROM s", "n\n24\n"),
    ("FROM (VALUES (1), (2)) AS t(n) SELECT sum(n) AS n", "n\n3\n"),
    ("VALUES (7)", "col0\n7\n"),
    ("SELECT 1 AS n UNION ALL SELECT 2 ORDER BY n", "n\n1\n2\n"),
    ("PIVOT (SELECT status FROM samples) ON status IN ('ok', 'skipped')", "ok,skipped\n18,6\n"),
    ("SELECT count(*) AS n FROM (DESCRIBE set_choices)", "n\n5\n"),
    ("SELECT count(*) > 0 AS some FROM (SHOW TABLES)", "some\ntrue\n"),
    ("SELECT column_name FROM (SUMMARIZE evals) ORDER BY ALL LIMIT 1", "column_name\nconfig_json\n"),
    ("DESCRIBE runs", None),
    ("SHOW TABLES", None),
    ("SUMMARIZE samples", None),
    ("EXPLAIN SELECT * FROM samples", None),
    ("EXPLAIN ANALYZE SELECT count(*) FROM samples", None),
    ("EXPLAIN ANALYZE (SELECT 1)", None),
    ("PRAGMA table_info('samples')", None),
    ("PRAGMA show_tables", None),
    ("PRAGMA database_size", None),
    ("PRAGMA version", None),
    ("/* a comment */\nPRAGMA platform", None),
    ("SELECT 1; SELECT 2 AS n", "n\n2\n"),
]


@pytest.mark.parametrize("statement,expected", READS, ids=[r[0][:40] for r in READS])
def test_every_read_statement_kind_runs(root, capsys, statement, expected):
    code, out, err = sql(root, capsys, statement, "--format", "csv")
    assert (code, err) == (0, "")
    assert out if expected is None else out == expected


def test_output_inside_the_warehouse_is_refused(root, capsys):
    committed = warehouse.table_paths(root, "samples")[0]
    before = stored_state(root)
    code, out, err = sql(root, capsys, "SELECT 1 AS x", "--format", "parquet", "--out", committed)
    assert (code, out) == (2, "") and err == (f"kneuron: error: --out {committed} is inside the warehouse "
                                               f"{root}; write results elsewhere\n")
    assert stored_state(root) == before


def test_usage_errors(root, tmp_path, capsys):
    code, _, err = sql(root, capsys)
    assert (code, err) == (2, "kneuron: error: give exactly one of: SQL text, --file FILE, --query NAME\n")
    code, _, err = sql(root, capsys, "SELECT 1", "-q", "set_sizes")
    assert err == "kneuron: error: give exactly one of: SQL text, --file FILE, --query NAME (got SQL and --query)\n"
    code, _, err = sql(root, capsys, "-f", str(tmp_path / "missing.sql"))
    missing = tmp_path / "missing.sql"
    assert code == 2 and err == f"kneuron: error: cannot read SQL file {missing}: No such file or directory\n"
    code, _, err = run_cli(["sql", "--warehouse", str(tmp_path / "nowhere"), "SELECT 1"], capsys)
    assert code == 2 and err.startswith("kneuron: error: no kneuron warehouse at ")
