"""The SQL of kneuron: one ``.sql`` file per query in this folder, loaded by name and run with bound parameters.

Parameters are DuckDB named parameters (``$name``). Values are always bound, never formatted into the SQL
text, so a concept called ``it's`` is just a value. ``run`` binds only the parameters that the query uses,
so one parameter dict can feed several queries.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from kneuron.engine.errors import KneuronError
from kneuron.queries import template

QUERY_DIR = Path(__file__).resolve().parent

# Comments and quoted text, removed before looking for `$name` so that `$x` inside them is not a parameter.
_NOT_CODE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", re.DOTALL)
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def names() -> list[str]:
    """Names of the bundled queries (file stems), sorted."""
    return sorted(path.stem for path in QUERY_DIR.glob("*.sql"))


@cache
def load(name: str) -> str:
    """The text of ``queries/<name>.sql``, its include lines expanded (`template.render`); `KneuronError` when there
    is no such query."""
    path = QUERY_DIR / f"{name}.sql"
    if not path.is_file():
        raise KneuronError(f"unknown query {name!r} (no file {path}); known: {', '.join(names())}")
    return template.render(path.read_text(encoding="utf-8"))


def fragments_of(path: Path) -> Path:
    """The folder whose fragments the include lines of the SQL file ``path`` name: `template.FRAGMENT_DIR` for a file
    of this package's queries folder (any subfolder too), else ``fragments/`` beside the file (as the bundled queries
    have theirs)."""
    resolved = path.resolve()
    if resolved.is_relative_to(QUERY_DIR):
        return template.FRAGMENT_DIR
    return resolved.parent / "fragments"


def load_file(path: Path) -> str:
    """The text of the SQL file ``path``, its include lines expanded as `load` expands a bundled query's, with the
    fragments of `fragments_of(path)`; `KneuronError` when the file cannot be read or an include is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KneuronError(f"cannot read SQL file {path}: {exc.strerror or exc}") from None
    return template.render(text, fragments_of(path))


def parameters(sql: str) -> list[str]:
    """The named parameters (``$name``) that ``sql`` uses, in order of first use, without duplicates."""
    code = _NOT_CODE.sub(" ", sql)
    return list(dict.fromkeys(_PARAMETER.findall(code)))


def bind(sql: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that ``sql`` uses; `KneuronError` naming any parameter that is missing."""
    wanted = parameters(sql)
    missing = [name for name in wanted if name not in params]
    if missing:
        raise KneuronError(f"query parameters not given: {', '.join('$' + n for n in missing)}")
    return {name: params[name] for name in wanted}


def execute(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run ``sql`` on ``con`` with ``params`` bound by name; the result (of the last statement) as Arrow.

    A statement without a result (``SET``, ``CREATE``) gives an empty table.

    A DuckDB error becomes `KneuronError("SQL error: <first line of DuckDB's message>")`.
    """
    bound = bind(sql, params or {})
    try:
        statements = con.extract_statements(sql)
        relation = con.sql(sql, params=bound or None)
        if relation is None or not statements or not _returns_rows(statements[-1]):
            return pa.table({})
        return relation.to_arrow_table()
    except duckdb.Error as exc:
        raise KneuronError(f"SQL error: {first_line(exc)}") from exc


def _returns_rows(statement: duckdb.Statement) -> bool:
    """Whether a statement is a query (SELECT, PRAGMA, EXPLAIN, ...) rather than DDL / SET / INSERT."""
    return list(statement.expected_result_type) == [duckdb.ExpectedResultType.QUERY_RESULT]


def run(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run the bundled query ``name`` (``queries/<name>.sql``) with ``params`` bound by name; a derived view
    (`VIEWS`) that the query names and the connection lacks is created first (`install_views`). A query whose text
    has the line `BUILD_AS_WRITTEN` runs with DuckDB's build-side swap off (`joins_as_written`)."""
    sql = load(name)
    named = {view for view in VIEWS if re.search(rf"\b{view}\b", sql)}
    wanted = [view for view in VIEWS if view in named or any(view in VIEW_USES.get(n, ()) for n in named)]
    if wanted and not set(wanted) <= relations(con):
        install_views(con, wanted)
    if BUILD_AS_WRITTEN not in sql.splitlines():
        return execute(con, sql, params)
    with joins_as_written(con):
        return execute(con, sql, params)


#: the line by which a query asks that each hash join build its table on the right-hand side as written
BUILD_AS_WRITTEN = "-- planner: hash joins build on the right-hand side as written"


@contextmanager
def joins_as_written(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Within the block, DuckDB builds each hash join's table on its right-hand side as the SQL writes it.

    Why: DuckDB estimates a materialized CTE at a row or so, so in a query such as ``two_stage.sql`` (tables of
    every neuron joined to a row per concept) it builds hash tables of millions of rows and probes them with 80
    (`benchmarks/test_bench_rollup.py` at 7B scale shows the cost). The optimizer that swaps the sides
    (``build_side_probe_side``) is switched off and the setting restored afterwards.
    """
    before = con.execute("SELECT current_setting('disabled_optimizers')").fetchone()
    off = [name for name in str(before[0] if before else "").split(",") if name.strip()]
    con.execute(f"SET disabled_optimizers = '{','.join([*off, 'build_side_probe_side'])}'")
    try:
        yield
    finally:
        if off:
            con.execute(f"SET disabled_optimizers = '{','.join(off)}'")
        else:
            con.execute("RESET disabled_optimizers")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (DuckDB messages run over several lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


#: derived views every connection gets (``queries/views/<name>.sql``), in creation order
VIEWS = ("current_sets", "current_members", "neuron_means")

#: the derived views a derived view reads (created before it: `VIEWS` is in creation order)
VIEW_USES = {"current_members": ("current_sets",)}


def connect(root: Any = None, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over the warehouse at ``root`` (`kneuron.warehouse.connect`) plus the derived views of this
    package (`VIEWS`: ``current_sets``, the one definition of which neuron set is current, and ``current_members``,
    their neurons)."""
    from kneuron import warehouse

    con = warehouse.connect(root, read_only=read_only)
    install_views(con)
    threads = __import__("os").environ.get("KNEURON_DUCKDB_THREADS")  # the command's thread policy, if any
    if threads and threads.isdigit() and int(threads) > 0:
        con.execute(f"SET threads = {int(threads)}")
    return con


#: what a derived view reads: a view is made only on connections that have these relations (a hand-built
#: connection without the signal tables gets current_sets alone)
VIEW_NEEDS = {"current_sets": ("neuron_sets", "set_choices"), "current_members": ("neuron_sets", "set_choices"),
              "neuron_means": ("neuron_stats", "samples", "splits")}

#: storage views `neuron_means` and ``massive_units.sql`` read (`kneuron.warehouse.connect` makes them); a connection
#: built by hand over a neuron_stats view gets these stand-ins: no rollup, every image row
_NO_ROLLUP = ("SELECT CAST(NULL AS VARCHAR) AS run_id, CAST(NULL AS VARCHAR) AS concept, CAST(NULL AS SMALLINT) AS "
              "layer, CAST(NULL AS SMALLINT) AS unit, CAST(NULL AS INTEGER) AS n_images, CAST(NULL AS DOUBLE) AS "
              "sum_d_max, CAST(NULL AS DOUBLE) AS sum_d_mean, CAST(NULL AS DOUBLE) AS sum_g_max, "
              "CAST(NULL AS DOUBLE) AS sum_g_mean, CAST(NULL AS DOUBLE) AS sum_abs_o_mean WHERE false")
ROLLUP_STAND_INS = {"neuron_rollup_summed": _NO_ROLLUP, "neuron_rollup_parts": _NO_ROLLUP,
                    "neuron_stats_unrolled": "SELECT * FROM neuron_stats"}


def relations(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the tables and views the connection has (temporary ones included)."""
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def install_views(con: duckdb.DuckDBPyConnection, names: tuple[str, ...] | list[str] = VIEWS) -> None:
    """Create the derived views ``names`` (default `VIEWS`) on a connection that has the warehouse's table views
    (a view whose tables the connection lacks, `VIEW_NEEDS`, is left out; a missing rollup view gets its
    stand-in)."""
    present = relations(con)
    for name in names:
        if not set(VIEW_NEEDS[name]) <= present:
            continue
        if name == "neuron_means":
            for view, select in ROLLUP_STAND_INS.items():
                if view not in present:
                    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {select}")
        con.execute((QUERY_DIR / "views" / f"{name}.sql").read_text(encoding="utf-8"))
