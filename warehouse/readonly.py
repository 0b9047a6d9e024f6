"""Read-only SQL: classify every statement of a SQL text before any of it runs, and refuse all but reads.

`connect(read_only=True)` switches off DuckDB's file access, but DuckDB still lets a statement write to a path
it may read (``COPY ... TO '<committed file>' (USE_TMP_FILE false)``), and DDL changes the connection's views.
`check_read_only_sql` closes that: it parses the text with DuckDB's own parser (``extract_statements``) and
lets through only

- SELECT in every form DuckDB parses as one: WITH ... SELECT, VALUES, FROM-first, set operations, PIVOT with
  an IN list, UNPIVOT, and DESCRIBE / SHOW / SUMMARIZE (DuckDB parses those as SELECT);
- EXPLAIN [ANALYZE] of such a statement (EXPLAIN ANALYZE runs the statement, so what it explains is checked);
- PRAGMA calls of the read-only pragmas in `READ_PRAGMAS` (``PRAGMA table_info('samples')``, ``PRAGMA version``).

Everything else is refused with a one-line `KneuronError` naming the statement type: COPY, CREATE, DROP,
ALTER, INSERT, UPDATE, DELETE, MERGE, ATTACH, DETACH, INSTALL / LOAD, SET / RESET / USE, EXPORT / IMPORT,
CALL, PREPARE / EXECUTE, transactions, VACUUM / ANALYZE / CHECKPOINT, other pragmas, PIVOT without an IN list
(DuckDB runs it as several statements) and statement kinds this DuckDB cannot name. No statement runs unless
all of them pass. DuckDB has no table function that writes files, so a SELECT cannot write; the locked-down
connection (`kneuron.warehouse.connect`) still stops it reading anything but the committed files.
"""
from __future__ import annotations

import re

import duckdb

from kneuron.engine.errors import KneuronError

# Pragmas that only report on the connection / catalog (anything else, e.g. enable_profiling, is refused).
READ_PRAGMAS = frozenset({
    "collations", "database_list", "database_size", "extension_versions", "functions", "metadata_info",
    "platform", "show_databases", "show_tables", "show_tables_expanded", "storage_info", "table_info",
    "user_agent", "version",
})

ALLOWED = "SELECT (WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE), EXPLAIN of those, and read-only PRAGMAs"

_HINTS = {
    "MULTI": "; write PIVOT ... ON column IN (value, ...)",
    "CALL": "; write SELECT * FROM function(...)",
}

_LEADING_COMMENTS = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*", re.DOTALL)
_EXPLAIN = re.compile(r"EXPLAIN\s+(?:ANALY[SZ]E\b\s*)?", re.IGNORECASE)
_PRAGMA = re.compile(r'PRAGMA\s+"?([A-Za-z_][A-Za-z0-9_]*)', re.IGNORECASE)


def check_read_only_sql(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise `KneuronError` unless every statement of ``sql`` only reads (see the module docstring).

    con: any DuckDB connection (only its parser is used; nothing runs).
    A syntax error is ``SQL error: <DuckDB's first line>``; a refused statement is
    ``read-only SQL: refused <TYPE> statement `<its start>` ...``.
    """
    for statement in _parse(con, sql):
        kind = _refused_kind(con, statement)
        if kind is not None:
            raise KneuronError(f"read-only SQL: refused {kind} statement `{_snippet(statement.query)}`; "
                               f"allowed: {ALLOWED}{_HINTS.get(kind, '')}")


def statement_kind(statement: duckdb.Statement) -> str:
    """DuckDB's name of a statement's type (``SELECT``, ``COPY``, ...), ``UNKNOWN`` when it has none."""
    try:
        return str(statement.type.name)
    except ValueError:  # a statement type newer than the Python enum (e.g. UPDATE EXTENSIONS)
        return "UNKNOWN"


def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    """The statements of ``sql``; a parser error is a one-line ``SQL error: ...`` `KneuronError`."""
    try:
        return list(con.extract_statements(sql))
    except duckdb.Error as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise KneuronError(f"SQL error: {first}") from None


def _refused_kind(con: duckdb.DuckDBPyConnection, statement: duckdb.Statement) -> str | None:
    """None when ``statement`` only reads, else the kind to name in the refusal."""
    kind = statement_kind(statement)
    if kind == "SELECT":
        return None
    text = _LEADING_COMMENTS.sub("", statement.query, count=1)
    if kind == "PRAGMA":
        match = _PRAGMA.match(text)
        return None if match and match.group(1).lower() in READ_PRAGMAS else kind
    if kind == "EXPLAIN":
        return None if _explains_only_reads(con, text) else kind
    return kind


def _explains_only_reads(con: duckdb.DuckDBPyConnection, text: str) -> bool:
    """Whether ``EXPLAIN [ANALYZE] [(options)] <statement>`` explains a read (a refused one may run).

    What follows EXPLAIN [ANALYZE] is read both as a statement and, when it starts with ``(``, as options
    followed by a statement; every reading that parses must be one read statement, and one must parse.
    """
    match = _EXPLAIN.match(text)
    if match is None:
        return False
    rest = text[match.end():]
    readings = [rest]
    options_end = _closing_paren(rest) if rest.startswith("(") else None
    if options_end is not None:
        readings.append(rest[options_end + 1:])
    parsed = []
    for reading in readings:
        try:
            statements = list(con.extract_statements(reading))
        except duckdb.Error:
            continue
        if any(_refused_kind(con, inner) is not None for inner in statements):
            return False
        parsed.append(statements)
    return any(len(statements) == 1 for statements in parsed)


def _closing_paren(text: str) -> int | None:
    """Index of the ``)`` that closes the ``(`` at ``text[0]`` (quotes respected), None when unbalanced."""
    depth, quote = 0, ""
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
    return None


def _snippet(text: str, limit: int = 60) -> str:
    """The start of a statement on one line (whitespace collapsed), at most ``limit`` characters."""
    flat = " ".join(_LEADING_COMMENTS.sub("", text, count=1).split()).rstrip(";")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
