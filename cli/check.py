"""`kneuron check`: caption-quality check of a model on a world split (mentions; removal by inpainting)."""
from __future__ import annotations

from pathlib import Path

import click

from kneuron.cli.options import DEVICE_HELP
from kneuron.engine.models.families import model_help


@click.command("check")
@click.option("--model", default="tiny-shapes-qformer", show_default=True, metavar="NAME|ID|PATH", help=model_help())
@click.option("--world", "world_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="COCO-format world (default: the embedded world in ./kneuron-world; its --split generated if "
                   "missing).")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--threads", type=int, default=None, help="Torch CPU threads [default: torch's].")
@click.option("--examples", type=int, default=0, show_default=True, help="Also print the first N captions.")
def command(model: str, world_dir: Path | None, split: str, limit: int | None, device: str,
            batch_size: int, threads: int | None, examples: int) -> None:
    """Print per-category mention precision/recall and the object-removal rates as a Markdown table."""
    import time

    import torch

    from kneuron.engine.data.world import WorldConfig, default_world_path, ensure_world
    from kneuron.engine.models import load_model
    from kneuron.engine.training.quality import check_quality

    if threads is not None:
        torch.set_num_threads(threads)
    world = world_dir or ensure_world(default_world_path(), WorldConfig(), splits=(split,))  # only the split read
    adapter = load_model(model, device=device, log=click.echo)
    started = time.perf_counter()
    report = check_quality(adapter, world, split=split, limit=limit, batch_size=batch_size)
    click.echo(f"model {model} on {world} [{split}]")
    click.echo(report.table())
    click.echo(f"checked in {time.perf_counter() - started:.0f} s")
    for image_id, caption in report.examples[:examples]:
        click.echo(f"  image {image_id}: {caption}")
