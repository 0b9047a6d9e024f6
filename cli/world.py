"""`kneuron world OUT_DIR`: generate the embedded COCO-format shapes world."""
from __future__ import annotations

import time
from pathlib import Path

import click

from kneuron.engine.data.world import WorldConfig

DEFAULT = WorldConfig()  # the embedded default world


@click.command("world")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=DEFAULT.seed, show_default=True, help="Random seed of the world.")
@click.option("--image-size", type=int, default=DEFAULT.image_size, show_default=True, help="Image side in pixels.")
@click.option("--n-train", type=int, default=DEFAULT.n_train, show_default=True, help="Images in the train split.")
@click.option("--n-val", type=int, default=DEFAULT.n_val, show_default=True, help="Images in the val split.")
@click.option("--n-test", type=int, default=DEFAULT.n_test, show_default=True, help="Images in the test split.")
@click.option("--layout-cells", type=int, default=DEFAULT.layout_cells, show_default=True,
              help="Objects sit in distinct cells of an N x N grid (0: anywhere).")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]),
              help="Generate only this split (repeatable) [default: every split]; other finished splits of the "
                   "same world stay.")
@click.option("--force", is_flag=True, help="Overwrite a world of another config (never a folder without a world).")
def command(out_dir: Path, seed: int, image_size: int, n_train: int, n_val: int, n_test: int,
            layout_cells: int, splits: tuple[str, ...], force: bool) -> None:
    """Generate the embedded shapes world (MS COCO 2017 layout) under OUT_DIR.

    A folder holding a world of the same config is regenerated in place (byte-identical files). With --split
    only the named splits are written (the same bytes as in a world generated whole).
    """
    from kneuron.engine.data.world import (
        CATEGORIES,
        check_world_target,
        generate_world,
        read_world_manifest,
        world_splits,
    )
    from kneuron.engine.errors import KneuronError

    config = WorldConfig(seed=seed, image_size=image_size, n_train=n_train, n_val=n_val, n_test=n_test,
                         layout_cells=layout_cells)
    check_world_target(out_dir, config, force)
    started = time.perf_counter()
    generate_world(out_dir, config, splits=splits or None)
    manifest = read_world_manifest(out_dir)
    if manifest is None:
        raise KneuronError(f"world {out_dir} has no readable manifest after generation")
    counts = manifest["counts"]
    present = world_splits(manifest)
    listing = ", ".join(f"{split} {counts[split]['images']}" for split in present)
    annotations = sum(counts[split]["annotations"] for split in present)
    click.echo(
        f"world {out_dir}: images {listing}; {annotations} annotations; {len(CATEGORIES)} categories; "
        f"seed {seed}, {image_size} px ({time.perf_counter() - started:.1f} s)"
    )
