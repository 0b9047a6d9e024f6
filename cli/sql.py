"""`kneuron sql`: run SQL over the warehouse views (read-only) and print or save the result."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kneuron.cli.options import deprecated_alias, warehouse_option
from kneuron.cli.render import render_csv, render_json, render_table
from kneuron.engine.errors import KneuronError

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
    """The SQL text from exactly one of: the argument, ``--file`` (includes expanded: `queries.load_file`),
    ``--query`` (a bundled query, includes expanded)."""
    from kneuron import queries

    given = [what for what, value in (("SQL", sql), ("--file", file), ("--query", query)) if value is not None]
    if len(given) != 1:
        raise KneuronError("give exactly one of: SQL text, --file FILE, --query NAME"
                           + (f" (got {' and '.join(given)})" if given else ""))
    if file is not None:
        return queries.load_file(Path(file))
    if query is not None:
        return queries.load(query)
    assert sql is not None
    return sql


def check_output_outside(output: str | None, root: Path) -> None:
    """Refuse an ``--out`` path inside the warehouse at ``root``: results never overwrite stored data."""
    if output is None:
        return
    target = Path(output).expanduser().absolute().resolve()
    if target == root.resolve() or root.resolve() in target.parents:
        raise KneuronError(f"--out {output} is inside the warehouse {root}; write results elsewhere")


@click.command("sql", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("sql", required=False)
@click.option("-f", "--file", "file", type=click.Path(dir_okay=False),
              help="Read the SQL from FILE; its `-- include: NAME key=value` lines take fragments/NAME.sql beside "
                   "FILE (the bundled fragments for a bundled query's file), as --query does.")
@click.option("-q", "--query", "query", metavar="NAME",
              help="Run a bundled analysis by name (`--list` shows them): set_sizes, layer_distribution, ...")
@click.option("--list", "list_queries", is_flag=True, help="List the bundled analyses, one line each, and exit.")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Bind $NAME (repeatable); VALUE is bound as a number when it reads as one, else as text. "
                   "Parameters not given are NULL (the bundled analyses read NULL as 'all').")
@warehouse_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table (DuckDB's box drawing), csv, json (JSON Lines) or parquet (needs --out).")
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False),
              help="Write the result to this file (not a folder) instead of stdout.")
@deprecated_alias("--output", "output", "--out", type=click.Path(dir_okay=False))
@click.option("--max-rows", type=click.IntRange(min=1), default=100, show_default=True,
              help="Rows shown by --format table.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Stop the query after S seconds (one line, exit code 2). Ctrl-C always stops it.")
def command(sql: str | None, file: str | None, query: str | None, list_queries: bool, params: tuple[str, ...],
            warehouse_path: str | None, fmt: str, output: str | None, max_rows: int,
            timeout: float | None) -> None:
    """Run read-only SQL over the warehouse views.

    Views: runs, splits, samples, neuron_stats, token_stats, neuron_sets, captions, scores, evals,
    set_choices, mentions, evidence_intervals, evidence_paired, evidence_gaps, current_sets, current_members.
    Only reading statements run: SELECT (WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE), EXPLAIN and read-only PRAGMAs;
    anything else (COPY, CREATE, DROP, INSERT, ATTACH, SET, ...) is refused before any statement runs. Only the result
    of the last statement is printed. Any SQL error is one line and exit code 2.

    \b
      kneuron sql "SELECT concept, count(*) FROM samples GROUP BY ALL"
      kneuron sql -q concept_overlap -p method=two_stage --format csv
      kneuron sql -f my.sql --format parquet -o result.parquet
      kneuron sql --list
    """
    from kneuron import queries
    from kneuron.api_warehouse import Warehouse

    if list_queries:
        from kneuron.queries.catalog import analyses

        rows = analyses()
        width = max(len(name) for name, _ in rows)
        for name, what in rows:
            click.echo(f"{name.ljust(width)}  {what}")
        return
    if fmt == "parquet" and output is None:
        raise KneuronError("--format parquet needs --out FILE")
    text = read_sql(sql, file, query)
    bound = dict(parse_param(p) for p in params)
    wanted = queries.parameters(text)
    unknown = sorted(set(bound) - set(wanted))
    if unknown:
        raise KneuronError(f"--param {', '.join(unknown)}: the SQL has no such parameter"
                           + (f" (it has {', '.join('$' + w for w in wanted)})" if wanted else ""))
    with Warehouse(warehouse_path) as wh:
        check_output_outside(output, wh.root)
        table = wh.table(text, bound, timeout=timeout)

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, output)
        except OSError as exc:
            raise KneuronError(f"cannot write {output}: {exc}") from None
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)
        return
    if table.num_columns == 0:  # a statement without a result
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
