"""`kneuron demo`: world -> ingest -> select -> suppress -> report on the embedded default, in one command."""
from __future__ import annotations

import time
from pathlib import Path

import click

from kneuron.cli.options import DEVICE_HELP, warehouse_option
from kneuron.engine.models.families import model_help


@click.command("demo")
@click.option("--model", default="tiny-shapes-qformer", show_default=True,
              metavar="NAME|ID|PATH", help=model_help())
@click.option("--world", "world_dir", type=click.Path(file_okay=False), default=None,
              help="Embedded world folder [default: $KNEURON_WORLD or ./kneuron-world; its test split generated if "
                   "missing].")
@warehouse_option
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default="kneuron-report", show_default=True,
              help="Folder the report goes into (not a file).")
@click.option("--images-per-concept", default=24, show_default=True, help="Identification images per concept.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def command(ctx: click.Context, model: str, world_dir: str | None, warehouse_path: str | None, out_dir: str,
            images_per_concept: int, device: str, progress: bool) -> None:
    """Run the whole method on the embedded shapes world with a bundled tiny MiniGPT-4 and write the report.

    Each step is the command of the same name with its defaults; rerunning resumes (finished work is reused).
    Every step works on the run this ingest made (or resumed) and suppress evaluates the two-stage sets this
    select chose, whatever other runs and selections the warehouse holds.
    """
    from kneuron.cli import ingest, report, select, suppress
    from kneuron.engine.models import BUNDLED
    from kneuron.engine.runtime.threads import SMALL_MODEL_PARAMS, job

    started = time.time()
    # a bundled model is tiny: every step runs on one torch thread unless the user chose a count
    # (kneuron.engine.runtime.threads)
    ctx.with_resource(job(n_params=SMALL_MODEL_PARAMS - 1 if model in BUNDLED else None))

    def step(name: str) -> None:
        click.echo(f"\n== {name}  (+{time.time() - started:.0f}s)")

    step("ingest: record O'_o, O'_i and g_c for every concept")
    coco_root = demo_world(world_dir)
    run_id = ctx.invoke(ingest.command, coco_root=coco_root, model=model, device=device,
                        images_per_concept=str(images_per_concept), warehouse_path=warehouse_path, progress=progress)
    step("select: two-stage filtering in DuckDB")
    selected = ctx.invoke(select.command, warehouse_path=warehouse_path, run_id=run_id)
    two_stage = selected.set_ids("two_stage")
    step("suppress: caption evaluation images with each neuron set zeroed, against baselines")
    ctx.invoke(suppress.command, warehouse_path=warehouse_path, run_id=run_id, set_ids=tuple(two_stage),
               device=device, progress=progress)
    step("report")
    ctx.invoke(report.command, warehouse_path=warehouse_path, run_id=run_id, set_ids=tuple(two_stage),
               out_dir=out_dir, device=device)
    click.echo(f"\ndemo finished in {time.time() - started:.0f}s; open {Path(out_dir).resolve() / 'report.html'}")



def demo_world(world_dir: str | None) -> str:
    """The dataset folder the demo ingests: the embedded world's test split (the only split the demo reads),
    generated into ``world_dir`` (default ``$KNEURON_WORLD`` or ``./kneuron-world``) when missing, without the
    train and val splits (`kneuron train` adds train when it needs it). A ``world_dir`` that is some other
    COCO-layout folder with a test split is used as it is."""
    from kneuron.engine.data.world import WorldConfig, default_world_path, ensure_world, read_world_manifest

    root = Path(world_dir).expanduser() if world_dir is not None else default_world_path()
    if read_world_manifest(root) is None and (root / "annotations" / "instances_test.json").is_file():
        return str(root.resolve())
    if "test" not in _splits_of(root):
        click.echo(f"generating the embedded world's test split into {root} (once)", err=True)
    return str(ensure_world(root, WorldConfig(), splits=("test",)).resolve())


def _splits_of(root: Path) -> tuple[str, ...]:
    from kneuron.engine.data.world import WorldConfig, read_world_manifest, world_config_of, world_splits

    return world_splits(read_world_manifest(root)) if world_config_of(root) == WorldConfig() else ()
