"""`kneuron verify`: check every committed warehouse file against its commit record; ``--repair`` removes the
batches that fail."""
from __future__ import annotations

import sys
from typing import Any

import click

from kneuron.cli.options import warehouse_option
from kneuron.cli.render import render_table

EXIT_CLEAN, EXIT_PROBLEMS = 0, 1

SUMMARY_COLUMNS = ("table", "files", "rows", "bad_files", "bad_batches")


def rows_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Any:
    """``rows`` (dicts) as a pyarrow table with exactly ``columns``, in that order (also when empty)."""
    import pyarrow as pa

    return pa.table({name: [row[name] for row in rows] for name in columns})


def render_report(report: Any) -> str:
    """The per-table summary of a `warehouse.VerifyReport` (box drawing) and its problems, grouped by batch,
    one line each (plain text, so that long paths stay whole)."""
    text = render_table(rows_table(report.summary_rows(), SUMMARY_COLUMNS), max_rows=10_000)
    for batch_id, problems in sorted(report.problems_by_batch().items()):
        text += f"batch {batch_id}: {len(problems)} problem(s)\n" if batch_id else \
            f"no batch (rows other batches name are missing): {len(problems)} problem(s)\n"
        text += "".join(f"  {p.table or '-'} {p.kind} {p.path}: {p.detail}\n" for p in problems)
    return text


def status_line(report: Any) -> str:
    """One line: clean, or how many problems in how many batches."""
    files = sum(summary.files for summary in report.tables)
    if report.ok:
        return f"warehouse {report.root} is clean: {report.batches} batches, {files} files checked"
    return (f"warehouse {report.root}: {len(report.problems)} problem(s) in {len(report.bad_batches)} "
            f"batch(es) of {report.batches}")


@click.command("verify", context_settings={"help_option_names": ["-h", "--help"]})
@warehouse_option
@click.option("--repair", is_flag=True,
              help="Remove the batches that fail (commit record first, then files), as the single writer; the "
                   "next `kneuron ingest` of their run records their (concept, image) pairs again.")
@click.option("--dry-run", is_flag=True, help="With --repair: say what it would remove and re-create; change nothing.")
@click.option("--force", is_flag=True,
              help="With --repair: also remove intact batches that depend on a lost runs row with no copy.")
def command(warehouse_path: str | None, repair: bool, dry_run: bool, force: bool) -> None:
    """Check the warehouse's committed files against their commit records.

    Per file: it exists, has its recorded size and sha256, reads as Parquet, holds its recorded rows, and
    every row's run_id names a committed run. Prints a summary per table and the problems per batch.

    \b
    --repair removes the least data that makes the warehouse consistent: damaged batches (damaged files only,
    for compacted ones), re-creating lost runs/evals/neuron_sets rows from the copies other records carry. When
    it would remove more than the damaged batches it stops and says what (--force does it); --dry-run shows the
    plan and changes nothing.

    \b
    Exit codes: 0 clean (also: clean after --repair); 1 problems found and not
    repaired; 2 bad input (no warehouse there, another writer holds it, read-only).
    """
    from kneuron import warehouse

    if (dry_run or force) and not repair:
        from kneuron.engine.errors import KneuronError

        raise KneuronError("--dry-run and --force go with --repair")

    if not repair:
        report = warehouse.verify_warehouse(warehouse_path)
        click.echo(render_report(report), nl=False)
        click.echo(status_line(report))
        if not report.ok:
            click.echo("run `kneuron verify --repair` to remove the failing batches", err=True)
            sys.exit(EXIT_PROBLEMS)  # SystemExit: the entry point runs click with standalone_mode=False
        return

    result = warehouse.repair(warehouse_path, dry_run=dry_run, force=force)
    click.echo(render_report(result.before), nl=False)
    click.echo(status_line(result.before))
    if not result.done:
        plan_lines = result.plan.lines() if result.plan is not None else []
        for line in plan_lines:
            click.echo(("would " if dry_run or result.refused else "") + line)
        if result.refused:
            dependents = len(result.plan.dependents) if result.plan is not None else 0
            click.echo(f"repair would remove {dependents} intact batch(es) beyond the damaged ones; "
                       "nothing changed: run `kneuron verify --repair --force` to do it", err=True)
        if not result.before.ok:
            sys.exit(EXIT_PROBLEMS)
        return
    for line in result.plan.lines() if result.plan is not None else []:
        click.echo(line)
    if result.removed_batches:
        click.echo(f"removed {len(result.removed_batches)} batch(es) ({len(result.removed_files)} file(s)): "
                   + " ".join(result.removed_batches))
    if not result.before.ok:
        click.echo(status_line(result.after))
    if not result.after.ok:
        click.echo(render_report(result.after), nl=False)
        sys.exit(EXIT_PROBLEMS)
