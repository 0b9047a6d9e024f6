"""`kneuron ingest`: record stage-1/stage-2 neuron signals of COCO (concept, image) pairs into the warehouse."""
from __future__ import annotations

import click

from kneuron.cli.options import DEVICE_HELP, deprecated_alias, ray_options, warehouse_option
from kneuron.engine.models.families import model_help

HELP = """Record, for every (concept, image) pair, the FFN activations of the original image and of the image
with the concept inpainted away, and the GradCAM attribution g_c, into the warehouse.

\b
Defaults: the embedded shapes world (generated into $KNEURON_WORLD or ./kneuron-world when missing), split
test, the bundled tiny-shapes-qformer model, every category with >= --min-images images. Rerunning the same
command resumes the run (finished pairs are skipped); a changed option makes a new run.
"""


@click.command("ingest", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--coco-root", type=click.Path(file_okay=False), default=None,
              help="COCO-layout folder (annotations/instances_<split>.json, <split>/) [default: the embedded "
                   "world at $KNEURON_WORLD or ./kneuron-world].")
@click.option("--split", default="test", show_default=True, help="Dataset split (e.g. val2017 for MS COCO).")
@click.option("--concept", "concepts", multiple=True, metavar="NAME",
              help="Concept = category name (repeatable) [default: every category with >= --min-images images].")
@click.option("--min-images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images a category needs to be chosen automatically.")
@click.option("--min-area", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Smallest instance area (px) for an image to count as showing the concept.")
@click.option("--images-per-concept", default="24", show_default=True, metavar="N|all",
              help="Identification images recorded per concept.")
@click.option("--ident-fraction", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.5, show_default=True,
              help="Share of a concept's images in the identification set (the rest: evaluation).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the identification/evaluation split.")
@click.option("--model", default="tiny-shapes-qformer", show_default=True, metavar="NAME|ID|PATH",
              help=model_help())
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="Model dtype (auto: as stored).")
@click.option("--batch-size", default="8", show_default=True, metavar="N|auto",
              help="Pairs per model batch (and per warehouse commit); auto: fit the free GPU memory (8 on CPU).")
@click.option("--positions", type=click.Choice(["image", "prompt", "target"]), default="image", show_default=True,
              help="Positions P: the image tokens, every prompt position, or the position that predicts the "
                   "concept token.")
@click.option("--top-k", type=click.IntRange(1, 127), default=16, show_default=True,
              help="Units kept per (layer, position) in token_stats.")
@click.option("--inpainter", type=click.Choice(["telea", "ns", "sd"]), default="telea", show_default=True,
              help="Object removal: OpenCV Telea / Navier-Stokes, or Stable Diffusion inpainting.")
@click.option("--margin", "margin_px", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Dilation of the concept's mask in pixels.")
@click.option("--inpaint-radius", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="OpenCV inpainting radius in pixels.")
@click.option("--sd-model", default=None, metavar="PATH|ID",
              help="Diffusers inpainting pipeline (for --inpainter sd): a folder or a Hub id org/name[@revision].")
@click.option("--sd-seed", type=int, default=0, show_default=True, help="Seed of the sd inpainter.")
@click.option("--sd-steps", type=click.IntRange(min=1), default=25, show_default=True, help="Denoising steps (sd).")
@click.option("--save-inpainted", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also save the inpainted images as DIR/<concept>/<image_id>.png.")
@warehouse_option
@click.option("--run", "run_id", default=None, metavar="RUN_ID",
              help="Run id [default: derived from the options, so reruns resume].")
@deprecated_alias("--run-id", "run_id", "--run")
@deprecated_alias("--data-root", "coco_root", "--coco-root", type=click.Path(file_okay=False))
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Log progress (pairs done / total, rate, ETA) to stderr at least every 30 s.")
@click.option("--retry-skipped/--no-retry-skipped", default=True, show_default=True,
              help="On resume, record again the pairs stored as skipped (e.g. an image that was missing).")
@ray_options("recorder", "local: this process; ray: CPU tasks and a pool of recorder actors on a Ray cluster "
             "(pip install 'kneuron[ray]'); the same run and rows either way.",
             "at most 1, leaving the image tasks room")
def command(coco_root: str | None, split: str, concepts: tuple[str, ...], min_images: int, min_area: float,
            images_per_concept: str, ident_fraction: float, seed: int, model: str, device: str, dtype: str,
            batch_size: str, positions: str, top_k: int, inpainter: str, margin_px: float, inpaint_radius: float,
            sd_model: str | None, sd_seed: int, sd_steps: int, save_inpainted: str | None,
            warehouse_path: str | None, run_id: str | None, progress: bool, retry_skipped: bool, engine: str,
            ray_address: str | None, workers: int, gpus_per_worker: float | None,
            cpus_per_worker: float | None) -> str:
    from kneuron.api_steps import ingest
    from kneuron.engine.errors import KneuronError

    if images_per_concept.strip().lower() == "all":
        per_concept = None
    else:
        try:
            per_concept = int(images_per_concept)
        except ValueError:
            raise KneuronError(f"--images-per-concept must be a number or 'all', got {images_per_concept!r}") from None
    batch: int | str = batch_size.strip().lower()
    if batch != "auto":
        try:
            batch = int(batch)
        except ValueError:
            raise KneuronError(f"--batch-size must be a number >= 1 or auto, got {batch_size!r}") from None
    result = ingest(
        warehouse_path, run=run_id, concepts=concepts, coco_root=coco_root, engine=engine, ray_address=ray_address,
        workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, split=split,
        min_images=min_images, min_area=min_area, images_per_concept=per_concept, ident_fraction=ident_fraction,
        seed=seed, model=model, device=device, dtype=dtype, batch_size=batch, positions=positions, top_k=top_k,
        inpainter=inpainter, margin_px=margin_px, inpaint_radius=inpaint_radius, sd_model=sd_model, sd_seed=sd_seed,
        sd_steps=sd_steps, save_inpainted=save_inpainted, progress=progress, retry_skipped=retry_skipped)
    click.echo(result.summary.line())
    return result.run_id
