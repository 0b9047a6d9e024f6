"""`kneuron compact`: merge each partition's small files into large ones, as one atomic warehouse operation."""
from __future__ import annotations

import click

from kneuron.cli.options import warehouse_option


@click.command("compact", context_settings={"help_option_names": ["-h", "--help"]})
@warehouse_option
@click.option("--target-rows", type=click.IntRange(min=1), default=None, metavar="N",
              help="Rows per merged file; files this large are kept as they are [default: 2^25].")
@click.option("--dry-run", is_flag=True, help="Say what would be merged; write nothing.")
def command(warehouse_path: str | None, target_rows: int | None, dry_run: bool) -> None:
    """Merge the small files of every (table, partition) into large ones, and build the neuron_rollup of
    partitions that lack it (warehouses written before it existed), so that queries open few files and
    `kneuron select` reads per-neuron sums instead of image rows.

    \b
    One commit record replaces every batch: readers see the old files or the new ones, never a mix; a crash
    leaves the old files valid (the next writer removes the leftovers). Rows and query results are the same
    before and after. Takes the writer lock (no ingest at the same time).
    """
    from kneuron.warehouse.compact import DEFAULT_TARGET_ROWS, compact

    result = compact(warehouse_path, target_rows=target_rows or DEFAULT_TARGET_ROWS, dry_run=dry_run,
                     log=lambda message: click.echo(f"kneuron: {message}", err=True))
    click.echo(result.line())
