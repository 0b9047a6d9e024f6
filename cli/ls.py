"""`kneuron ls runs|sets|evals`: what a warehouse holds, one row per run, neuron set or evaluation."""
from __future__ import annotations

import click

from kneuron.cli.options import warehouse_option

#: what -> (bundled query, what one row is)
LISTINGS: dict[str, tuple[str, str]] = {
    "runs": ("list_runs", "run_id, created_at, model_name, concepts, pairs_ok, pairs_skipped"),
    "sets": ("list_sets", "set_id, run_id, concept, method, size, created_at, current"),
    "evals": ("list_evals", "eval_id, run_id, created_at, methods, concepts"),
}


@click.command("ls", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("what", type=click.Choice(list(LISTINGS)))
@warehouse_option
@click.option("--run", "run_id", metavar="RUN_ID", help="Only this run [default: every run].")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table (DuckDB's box drawing, every row), csv, or json (JSON Lines).")
def command(what: str, warehouse_path: str | None, run_id: str | None, fmt: str) -> None:
    """List the runs, neuron sets or suppression evaluations of the warehouse.

    \b
    runs:  run_id, created_at, model_name, concepts, pairs_ok, pairs_skipped
    sets:  set_id, run_id, concept, method, size, created_at, current
           (current: the set that --concept/--method pick in decode, heatmap, caption, report and suppress)
    evals: eval_id, run_id, created_at, methods, concepts (those with suppressed captions)

    The SQL is queries/list_<what>.sql (also `kneuron sql -q list_sets -p run_id=R`).
    """
    from kneuron import queries
    from kneuron.cli.render import render_csv, render_json, render_table
    from kneuron.engine.errors import KneuronError

    con = queries.connect(warehouse_path, read_only=True)
    try:
        if run_id is not None and not queries.run(con, "list_runs", {"run_id": run_id}).num_rows:
            known = queries.run(con, "list_runs", {"run_id": None}).column("run_id").to_pylist()
            raise KneuronError(f"unknown run {run_id!r}; runs in the warehouse: {', '.join(known) or 'none'}")
        table = queries.run(con, LISTINGS[what][0], {"run_id": run_id})
    finally:
        con.close()
    if fmt == "csv":
        click.echo(render_csv(table), nl=False)
    elif fmt == "json":
        click.echo(render_json(table), nl=False)
    else:
        click.echo(render_table(table, max_rows=max(table.num_rows, 1) + 1), nl=False)
