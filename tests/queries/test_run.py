"""`queries.run`: bundled queries by name, and the planner setting a query can ask for (`joins_as_written`)."""
from __future__ import annotations

import duckdb
import pytest

from kneuron import queries
from kneuron.engine.errors import KneuronError


def disabled(con: duckdb.DuckDBPyConnection) -> str:
    return str(con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0])


def test_joins_as_written_switches_the_side_swap_off_and_restores_the_setting() -> None:
    con = duckdb.connect()
    with queries.joins_as_written(con):
        assert disabled(con) == "build_side_probe_side"
    assert disabled(con) == ""
    con.execute("SET disabled_optimizers = 'filter_pushdown'")
    with pytest.raises(RuntimeError), queries.joins_as_written(con):
        assert disabled(con) == "filter_pushdown,build_side_probe_side"
        raise RuntimeError("a failing query")
    assert disabled(con) == "filter_pushdown"


def test_run_applies_the_setting_only_to_a_query_that_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {"asks": f"{queries.BUILD_AS_WRITTEN}\nSELECT current_setting('disabled_optimizers') AS d",
             "plain": "SELECT current_setting('disabled_optimizers') AS d",
             "broken": f"{queries.BUILD_AS_WRITTEN}\nSELECT * FROM no_such_table"}
    monkeypatch.setattr(queries, "load", lambda name: texts[name])
    con = duckdb.connect()
    assert queries.run(con, "asks").column("d").to_pylist() == ["build_side_probe_side"]
    assert queries.run(con, "plain").column("d").to_pylist() == [""]
    with pytest.raises(KneuronError, match="no_such_table"):
        queries.run(con, "broken")
    assert disabled(con) == ""


def test_two_stage_asks_for_joins_as_written() -> None:
    assert queries.BUILD_AS_WRITTEN in queries.load("two_stage").splitlines()
