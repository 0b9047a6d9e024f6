"""`kneuron demo`: world -> ingest -> select -> suppress -> report on the embedded default, in one command."""
from __future__ import annotations

import time
from pathlib import Path

import click


@click.command("demo")
@click.option("--model", default="tiny-shapes-qformer", show_default=True,
              help="Bundled tiny model (tiny-shapes-qformer | tiny-shapes-patch) or a model folder.")
@click.option("--world", "world_dir", type=click.Path(file_okay=False), default=None,
              help="Embedded world folder [default: $KNEURON_WORLD or ./kneuron-world; generated if missing].")
@click.option("--warehouse", "warehouse_path", type=click.Path(file_okay=False), default=None,
              help="Warehouse [default: $KNEURON_WAREHOUSE or ./kneuron-warehouse].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="kneuron-report", show_default=True,
              help="Where the report goes.")
@click.option("--images-per-concept", default=24, show_default=True, help="Identification images per concept.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def command(ctx: click.Context, model: str, world_dir: str | None, warehouse_path: str | None, out_dir: str,
            images_per_concept: int, device: str, progress: bool) -> None:
    """Run the whole method on the embedded shapes world with a bundled tiny MiniGPT-4 and write the report.

    Each step is the command of the same name with its defaults; rerunning resumes (finished work is reused).
    Every step works on the run this ingest made (or resumed) and suppress evaluates the two-stage sets this
    select chose, whatever other runs and selections the warehouse holds.
    """
    from cli import ingest, report, select, suppress

    started = time.time()

    def step(name: str) -> None:
        click.echo(f"\n== {name}  (+{time.time() - started:.0f}s)")

    step("ingest: record O'_o, O'_i and g_c for every concept")
    run_id = ctx.invoke(ingest.command, coco_root=world_dir, model=model, device=device,
                        images_per_concept=str(images_per_concept), warehouse_path=warehouse_path, progress=progress)
    step("select: two-stage filtering in DuckDB")
    selected = ctx.invoke(select.command, warehouse_path=warehouse_path, run_id=run_id)
    two_stage = [row["set_id"] for row in selected.selection.summary.to_pylist()
                 if row["method"] == "two_stage" and row["n_selected"]]
    step("suppress: caption evaluation images with each neuron set zeroed, against baselines")
    ctx.invoke(suppress.command, warehouse_path=warehouse_path, run_id=run_id, set_ids=tuple(two_stage),
               device=device, progress=progress)
    step("report")
    ctx.invoke(report.command, warehouse_path=warehouse_path, run_id=run_id, set_ids=tuple(two_stage),
               out_dir=out_dir, device=device)
    click.echo(f"\ndemo finished in {time.time() - started:.0f}s; open {Path(out_dir).resolve() / 'report.html'}")

