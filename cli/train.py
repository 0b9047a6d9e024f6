"""`kneuron train`: train a tiny MiniGPT-4 on the embedded world (reproduces the bundled models)."""
from __future__ import annotations

from pathlib import Path

import click

from engine.train import TrainConfig


@click.command("train")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--variant", type=click.Choice(["qformer", "patch"]), default="qformer", show_default=True,
              help="qformer: Vicuna-v0-style Q-Former; patch: LLaMA-2-style grouped patches.")
@click.option("--world", "world_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="COCO-format world to train on [default: the embedded world ($KNEURON_WORLD or ./kneuron-world), "
                   "generated if missing].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None,
              help="Optimiser steps [default: the bundled model's recipe: "
                   + ", ".join(f"{v} {TrainConfig.bundled(v).steps}" for v in ("qformer", "patch")) + "].")
@click.option("--threads", type=int, default=TrainConfig.threads, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def command(out_dir: Path, variant: str, world_dir: Path | None, seed: int, steps: int | None, threads: int,
            device: str) -> None:
    """Train a tiny MiniGPT-4 (from scratch, word-level tokenizer) and save it as a model folder.

    The bundled models were made with `kneuron train OUT --variant qformer` and `--variant patch`
    (each variant's recipe, seed 0); `kneuron check --model OUT` measures their caption quality.
    """
    from engine.data.world import default_world_path, ensure_world
    from engine.train import TRAIN_WORLD, train_tiny_minigpt4

    world = world_dir if world_dir is not None else ensure_world(default_world_path(), TRAIN_WORLD)
    overrides = {"steps": steps} if steps is not None else {}
    cfg = TrainConfig.bundled(variant, seed=seed, threads=threads, device=device, **overrides)
    train_tiny_minigpt4(world, out_dir, cfg, log=click.echo)
    click.echo(f"saved {variant} model to {out_dir}")
