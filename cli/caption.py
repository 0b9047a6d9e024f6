"""`kneuron caption`: greedy captions of image files, optionally beside the captions with neurons suppressed."""
from __future__ import annotations

import click

from kneuron.cli.options import DEVICE_HELP, neuron_set_options, open_image, require_neuron_choice
from kneuron.engine.models.families import model_help

DEFAULT_MODEL = "tiny-shapes-qformer"


@click.command("caption", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@neuron_set_options(concept_help="Suppress the current --method neuron set of this concept.",
                    set_help="Suppress the neuron set with this id (`kneuron ls sets`).")
@click.option("--model", metavar="NAME|ID|PATH",
              help=model_help(f"the run's model when the neurons come from a warehouse, else {DEFAULT_MODEL}"))
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--ablation", type=click.Choice(["zero", "mean", "resample"]), default="zero", show_default=True,
              help="What the suppressed units become: zero, their mean over the --reference images (per position "
                   "kind: image / prompt / generated) or a seeded --reference image's activation (resample).")
@click.option("--reference", "references", multiple=True, type=click.Path(dir_okay=False), metavar="IMAGE",
              help="Reference image of mean / resample ablation (repeatable; required with them).")
@click.option("--seed", default=0, show_default=True, help="Seed of the resample donors.")
def command(images: tuple[str, ...], warehouse_path: str | None, run_id: str | None, concept: str | None,
            method: str, set_id: str | None, neurons: tuple[str, ...], model: str | None, device: str,
            batch_size: int, ablation: str, references: tuple[str, ...], seed: int) -> None:
    """Caption IMAGES (greedy, the model's template and stop rules).

    With neurons (--neuron L:U, --set SET_ID, or the current --method set of --concept in the run) each image
    is captioned twice: as it is and with those FFN units replaced (--ablation: zero, mean or resample) at
    every position while generating.
    """
    from kneuron.engine.errors import KneuronError
    from kneuron.engine.interventions.ablation import Ablation, record_reference
    from kneuron.engine.interventions.caption import caption_images
    from kneuron.engine.interventions.multiset import caption_under_sets
    from kneuron.engine.models import load_model
    from kneuron.engine.signals.neurons import as_neuron_set, parse_neuron

    if ablation != "zero" and not references:
        raise KneuronError(f"--ablation {ablation} needs --reference images (their activations replace the units')")

    pictures = [open_image(path) for path in images]
    pairs = [parse_neuron(text) for text in neurons]
    suppress = bool(neurons or set_id or concept)
    if suppress:
        require_neuron_choice(neurons, set_id, concept)
    what = f"{len(pairs)} neuron(s)"
    if suppress and not (pairs and model):
        from kneuron.engine.pipelines.run import RunReader

        with RunReader(warehouse_path, run_id) as run:
            if not pairs:
                _, members, what = run.chosen_set(concept, method, set_id)
                pairs = [(layer, unit) for layer, unit, _ in members]
            adapter = run.load_model(model, device=device)
            for note in run.notes:
                click.echo(f"note: {note}", err=True)
    else:
        adapter = load_model(model or DEFAULT_MODEL, device=device)
    plain = caption_images(adapter, pictures, batch_size=batch_size).texts
    if not suppress:
        for path, caption in zip(images, plain, strict=True):
            click.echo(f"{path}: {caption}")
        return
    reference = (record_reference(adapter, [open_image(path) for path in references], batch_size)
                 if ablation != "zero" else None)
    suppressed = caption_under_sets(adapter, pictures, [as_neuron_set(pairs)], Ablation(ablation, reference, seed),
                                    rows_per_generate=batch_size)[0].texts
    click.echo(f"suppressed: {what}" + ("" if ablation == "zero" else f" ({ablation} ablation)"))
    for path, caption, changed in zip(images, plain, suppressed, strict=True):
        click.echo(f"{path}\n  unmodified: {caption}\n  suppressed: {changed}")
