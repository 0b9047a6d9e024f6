"""`kneuron sql`: run SQL over the warehouse views (read-only) and print or save the result."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import click

from engine.errors import KneuronError

FORMATS = ("table", "csv", "json", "parquet")


def parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, value); the value becomes an int or float when it reads as one, else text."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise KneuronError(f"bad --param {text!r}; expected NAME=VALUE")
    for kind in (int, float):
        try:
            return name, kind(raw)
        except ValueError:
            pass
    return name, raw


def read_sql(sql: str | None, file: str | None, query: str | None) -> str:
    """The SQL text from exactly one of: the argument, ``--file``, ``--query`` (a bundled query)."""
    import queries

    given = [what for what, value in (("SQL", sql), ("--file", file), ("--query", query)) if value is not None]
    if len(given) != 1:
        raise KneuronError("give exactly one of: SQL text, --file FILE, --query NAME"
                           + (f" (got {' and '.join(given)})" if given else ""))
    if file is not None:
        path = Path(file)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KneuronError(f"cannot read SQL file {path}: {exc.strerror or exc}") from None
    if query is not None:
        return queries.load(query)
    return sql  # type: ignore[return-value]


def render_table(table: Any, max_rows: int) -> str:
    """``table`` (pyarrow) as DuckDB's box drawing, at most ``max_rows`` rows, fitted to the terminal."""
    import duckdb

    con = duckdb.connect()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        con.from_arrow(table).show(max_rows=max_rows, max_width=shutil.get_terminal_size((120, 24)).columns,
                                   null_value="NULL")
    con.close()
    return buffer.getvalue()


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def render_json(table: Any) -> str:
    """One JSON object per row (JSON Lines); timestamps as ISO text, NaN/inf as null."""
    lines = [json.dumps(_json_ready(row), default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v),
                        ensure_ascii=False)
             for row in table.to_pylist()]
    return "".join(line + "\n" for line in lines)


def render_csv(table: Any) -> str:
    """CSV with a header row; nested values (lists, structs) as DuckDB writes them as text, NULL as empty."""
    import duckdb

    con = duckdb.connect()
    relation = con.from_arrow(table)
    as_text = relation.project(", ".join(f'CAST("{name.replace(chr(34), chr(34) * 2)}" AS VARCHAR)'
                                         for name in table.column_names)) if table.num_columns else relation
    rows = as_text.fetchall() if table.num_columns else []
    con.close()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return buffer.getvalue()


@click.command("sql", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("sql", required=False)
@click.option("-f", "--file", "file", type=click.Path(dir_okay=False), help="Read the SQL from FILE.")
@click.option("-q", "--query", "query", metavar="NAME",
              help="Run a bundled query: set_sizes, layer_distribution, concept_overlap, generic_neurons, ...")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind $NAME (repeatable); VALUE is bound as a number when it reads as one, else as text. "
                   "Parameters not given are NULL (the bundled analyses read NULL as 'all').")
@click.option("--warehouse", "warehouse_path", type=click.Path(file_okay=False),
              help="Warehouse directory [default: $KNEURON_WAREHOUSE or ./kneuron-warehouse].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table (DuckDB's box drawing), csv, json (JSON Lines) or parquet (needs --output).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the result to FILE instead of stdout.")
@click.option("--max-rows", type=click.IntRange(min=1), default=100, show_default=True,
              help="Rows shown by --format table.")
def command(sql: str | None, file: str | None, query: str | None, params: tuple[str, ...],
            warehouse_path: str | None, fmt: str, output: str | None, max_rows: int) -> None:
    """Run SQL over the warehouse views, read-only.

    Views: runs, splits, samples, neuron_stats, token_stats, neuron_sets, captions, scores, evals.
    Only the result of the last statement is printed. Any SQL error is one line and exit code 2.

    \b
      kneuron sql "SELECT concept, count(*) FROM samples GROUP BY ALL"
      kneuron sql -q concept_overlap -p method=two_stage --format csv
      kneuron sql -f my.sql --format parquet -o result.parquet
    """
    import queries
    import warehouse

    if fmt == "parquet" and output is None:
        raise KneuronError("--format parquet needs --output FILE")
    text = read_sql(sql, file, query)
    bound = dict(parse_param(p) for p in params)
    wanted = queries.parameters(text)
    unknown = sorted(set(bound) - set(wanted))
    if unknown:
        raise KneuronError(f"--param {', '.join(unknown)}: the SQL has no such parameter"
                           + (f" (it has {', '.join('$' + w for w in wanted)})" if wanted else ""))
    con = warehouse.connect(warehouse_path, read_only=True)
    try:
        table = queries.execute(con, text, {name: bound.get(name) for name in wanted})
    finally:
        con.close()

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, output)
        except OSError as exc:
            raise KneuronError(f"cannot write {output}: {exc}") from None
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)
        return
    if table.num_columns == 0:  # a statement without a result (SET, CREATE, ...)
        return
    rendered = {"table": lambda: render_table(table, max_rows), "csv": lambda: render_csv(table),
                "json": lambda: render_json(table)}[fmt]()
    if output is None:
        click.echo(rendered, nl=False)
        return
    try:
        Path(output).write_text(rendered, encoding="utf-8")
    except OSError as exc:
        raise KneuronError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {table.num_rows} rows to {output}", err=True)
