"""`kneuron sql`: formats, bound parameters, bundled queries, read-only views and the one-line SQL error."""
from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest

import warehouse
from queries.selection import SelectionConfig, run_selection, store_neuron_sets
from tests.cli_runner import run_cli
from tests.test_selection import build_warehouse, make_world

PER_CONCEPT = "SELECT concept, count(*) AS n, min(image_id) AS first FROM samples WHERE run_id = 'r1' " \
              "GROUP BY concept ORDER BY concept"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    stats, samples = make_world(seed=3, n_images=4, n_layers=2, n_units=30)
    path = tmp_path_factory.mktemp("sqlwh") / "wh"
    build_warehouse(path, stats, samples)
    with warehouse.connect(path) as con:
        selection = run_selection(con, SelectionConfig(run_id="r1"))
    with warehouse.Warehouse.open(path, create=True) as wh:
        store_neuron_sets(wh, selection.neuron_sets)
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
    assert (code, out, err) == (2, "", "kneuron: error: --format parquet needs --output FILE\n")
    target = tmp_path / "r.parquet"
    code, _, err = sql(root, capsys, PER_CONCEPT, "--format", "parquet", "--output", str(target))
    assert code == 0 and err == f"wrote 3 rows to {target}\n"
    assert pq.read_table(target).to_pylist()[1] == {"concept": "it's", "n": 4, "first": 100}


def test_output_file_and_sql_file(root, tmp_path, capsys):
    query = tmp_path / "q.sql"
    query.write_text("-- a comment with $not_a_param\n" + PER_CONCEPT + ";\n", encoding="utf-8")
    target = tmp_path / "out.csv"
    code, out, _ = sql(root, capsys, "-f", str(query), "--format", "csv", "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text(encoding="utf-8").splitlines()[1] == "dog,4,100"


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


def test_views_are_read_only(root, tmp_path, capsys):
    target = tmp_path / "leak.csv"
    code, out, err = sql(root, capsys, f"COPY (SELECT 1) TO '{target}'")
    assert code == 2 and err.startswith("kneuron: error: SQL error: Permission Error:") and err.count("\n") == 1
    assert not target.exists()
    code, out, err = sql(root, capsys, "DROP VIEW samples")  # a view of this in-memory connection only
    assert (code, out, err) == (0, "", "")
    code, out, _ = sql(root, capsys, "SELECT count(*) AS n FROM samples", "--format", "csv")
    assert (code, out) == (0, "n\n24\n")


def test_usage_errors(root, tmp_path, capsys):
    code, _, err = sql(root, capsys)
    assert (code, err) == (2, "kneuron: error: give exactly one of: SQL text, --file FILE, --query NAME\n")
    code, _, err = sql(root, capsys, "SELECT 1", "-q", "set_sizes")
    assert err == "kneuron: error: give exactly one of: SQL text, --file FILE, --query NAME (got SQL and --query)\n"
    code, _, err = sql(root, capsys, "-f", str(tmp_path / "missing.sql"))
    assert code == 2 and err == f"kneuron: error: cannot read SQL file {tmp_path / 'missing.sql'}: No such file or directory\n"
    code, _, err = run_cli(["sql", "--warehouse", str(tmp_path / "nowhere"), "SELECT 1"], capsys)
    assert code == 2 and err.startswith("kneuron: error: no kneuron warehouse at ")
