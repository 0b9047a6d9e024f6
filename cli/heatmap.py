"""`kneuron heatmap`: a neuron set's activation over an image, drawn on it as a PNG."""
from __future__ import annotations

from pathlib import Path

import click

from kneuron.cli.options import DEVICE_HELP, deprecated_alias, neuron_set_options, open_image, require_neuron_choice
from kneuron.engine.models.families import model_help


@click.command("heatmap", context_settings={"help_option_names": ["-h", "--help"]})
@neuron_set_options(concept_help="Concept: its current --method set, and its mask for --image-id.",
                    set_help="Use the neuron set with this id (`kneuron ls sets`).")
@click.option("--image", "image_path", type=click.Path(dir_okay=False), help="An image file.")
@click.option("--inpainted", "inpainted_path", type=click.Path(dir_okay=False),
              help="With --image: its inpainted copy, drawn beside it on the same scale.")
@click.option("--image-id", type=int, help="An image of the run's dataset: drawn beside its copy with the "
                                           "concept inpainted away (the run's inpainter).")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Output PNG file (a file, not a folder).")
@click.option("--model", metavar="NAME|ID|PATH", help=model_help("the run's model"))
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--coco-root", "data_root", type=click.Path(file_okay=False),
              help="COCO-layout dataset folder for --image-id [default: the run's].")
@deprecated_alias("--data-root", "data_root", "--coco-root", type=click.Path(file_okay=False))
@click.option("--split", help="Dataset split for --image-id [default: the run's].")
@click.option("--value", "heat_value", type=click.Choice(["magnitude", "signed"]), default="magnitude",
              show_default=True, help="Heat of a token: mean |activation| of the set's units, or the signed mean.")
@click.option("--probes", type=click.IntRange(min=1), default=16, show_default=True,
              help="Q-Former models: probe vectors of the Jacobian attribution.")
def command(warehouse_path: str | None, run_id: str | None, concept: str | None, method: str, set_id: str | None,
            neurons: tuple[str, ...], image_path: str | None, inpainted_path: str | None, image_id: int | None,
            out_path: str, model: str | None, device: str, data_root: str | None, split: str | None,
            heat_value: str, probes: int) -> None:
    """Draw the mean activation of a neuron set at the image tokens over the image (jet colormap).

    Neurons come from --neuron L:U, --set SET_ID, or the current --method set of --concept. The image is a file
    (--image, optionally with --inpainted) or an image of the run's dataset (--image-id with --concept), shown
    beside its inpainted copy. Q-Former models map query tokens to patches by a Jacobian attribution (see
    engine/signals/heatmap.py).
    """
    from kneuron.engine.errors import KneuronError
    from kneuron.engine.models import load_model, resolve_device
    from kneuron.engine.signals.heatmap import heatmaps, overlay, side_by_side
    from kneuron.engine.signals.neurons import parse_neuron

    device = resolve_device(device)

    if (image_path is None) == (image_id is None):
        raise KneuronError("give exactly one of --image PATH and --image-id ID")
    if inpainted_path and not image_path:
        raise KneuronError("--inpainted goes with --image")
    require_neuron_choice(neurons, set_id, concept)
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise KneuronError(f"--out must be a .png file, got {out}")
    pairs = [parse_neuron(text) for text in neurons]
    what = f"{len(pairs)} neuron(s)"
    if pairs and model is not None and image_path is not None:  # no warehouse needed
        adapter = load_model(model, device=device)
        images = [open_image(image_path)] + ([open_image(inpainted_path)] if inpainted_path else [])
    else:
        from kneuron.engine.pipelines.run import RunReader

        with RunReader(warehouse_path, run_id) as run:
            if not pairs:
                concept, members, what = run.chosen_set(concept, method, set_id)
                pairs = [(layer, unit) for layer, unit, _ in members]
            if image_id is not None:
                if not concept:
                    raise KneuronError("--image-id needs --concept (whose object is inpainted away)")
                dataset = run.dataset(data_root, split)
                inpainter, margin = run.inpainter(device)
                images = list(run.pair(dataset, concept, image_id, inpainter, margin))
            else:
                assert image_path is not None  # exactly one of --image and --image-id was checked above
                images = [open_image(image_path)] + ([open_image(inpainted_path)] if inpainted_path else [])
            adapter = run.load_model(model, device=device)
            for note in run.notes:
                click.echo(f"note: {note}", err=True)
    heats = heatmaps(adapter, images, pairs, joint=True, n_probes=probes, value=heat_value)
    if len(images) == 2:
        picture = side_by_side(overlay(images[0], heats[0]), overlay(images[1], heats[1]),
                               labels=("original", "inpainted (same scale)"))
    else:
        picture = side_by_side(images[0], overlay(images[0], heats[0]), labels=("image", "heatmap"))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, format="PNG")
    source = f"image {image_id}" if image_id is not None else image_path
    click.echo(f"wrote {out} ({picture.width}x{picture.height}): {what} on {source}")
