"""`kneuron edit`: write a model folder with a neuron set erased (``W_down[:, i] = 0``) or scaled, for good."""
from __future__ import annotations

from typing import Any

import click

from kneuron.cli.options import neuron_set_options


def _warehouse_dir(warehouse_path: str | None) -> str:
    """The warehouse folder the command may read (never replaced by --force)."""
    import os

    from kneuron.warehouse.layout import DEFAULT_PATH, ENV_VAR

    return warehouse_path or os.environ.get(ENV_VAR) or DEFAULT_PATH


@click.command("edit", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path())
@click.option("--model", help="Model name or folder to edit [default: the run's model when the neurons come from a "
                              "warehouse; needed with --neuron].")
@neuron_set_options(concept_help="Edit the current --method neuron set of this concept.",
                    set_help="Edit the neuron set with this id (`kneuron ls sets`).")
@click.option("--scale", "scale_text", default="0", show_default=True, metavar="S",
              help="Multiply the units' output columns by S: 0 erases them, 2 amplifies them.")
@click.option("--force", is_flag=True, help="Replace OUT when it is an earlier `kneuron edit` output (never a "
                                            "warehouse, the model read, $HOME, /, the current folder or a parent).")
@click.option("--device", default="auto", show_default=True,
              help="Device to load the model on (to check it): cpu, cuda, ... (auto: CUDA when available).")
def command(out: str, model: str | None, warehouse_path: str | None, run_id: str | None, concept: str | None,
            method: str, set_id: str | None, neurons: tuple[str, ...], scale_text: str, force: bool,
            device: str) -> None:
    """Write OUT: the model with a neuron set erased (--scale 0, the default) or scaled (--scale 2: amplified).

    Neurons come from --neuron L:U (with --model), --set SET_ID, or the current --method set of --concept in the
    run. Each unit's column of its layer's down_proj weight is multiplied by the scale (set to zero for 0), which
    acts like the suppression hook of `kneuron caption` / `kneuron suppress` at every position. Every other
    file of the model folder is copied byte for byte (safetensors: only the edited tensors' bytes change), and
    OUT/kneuron_edit.json records the edit. OUT loads with --model OUT (and, for Hugging Face folders, with
    plain transformers).
    """
    from kneuron.engine.errors import KneuronError
    from kneuron.engine.interventions.edit import check_out, check_scale, edit_model
    from kneuron.engine.signals.neurons import parse_neuron

    scale = check_scale(scale_text)
    protected = [_warehouse_dir(warehouse_path)]
    check_out(out, force, protected=protected)
    given = [name for name, value in (("--neuron", neurons), ("--set", set_id), ("--concept", concept)) if value]
    if len(given) != 1:
        raise KneuronError("say which neurons with one of --neuron L:U, --set SET_ID or --concept C"
                           + (f" (got {', '.join(given)})" if given else ""))

    def say(message: str) -> None:
        click.echo(f"kneuron: {message}", err=True)

    if neurons:
        if not model:
            raise KneuronError("--neuron needs --model (the model to edit)")
        pairs = [parse_neuron(text) for text in neurons]
        result = edit_model(model, out, pairs, scale, force=force, device=device, log=say, protected=protected)
        what = f"{len(set(pairs))} neuron(s)"
    else:
        from kneuron.engine.pipelines.run import RunReader

        with RunReader(warehouse_path, run_id) as run:
            chosen, stored, _, what = run.chosen_stored_set(concept, method, set_id)
            pairs = [(layer, unit) for layer, unit, _ in stored.neurons]
            source = model or run.model_name
            adapter = run.load_model(model, device=device)
            for note in run.notes:
                click.echo(f"note: {note}", err=True)
            origin: dict[str, Any] = {"set_id": chosen, "run_id": run.run_id, "concept": stored.concept,
                                      "method": stored.method, "warehouse": str(run.root) if run.root else None,
                                      "run_model_hash": run.row.get("model_hash")}
            result = edit_model(source, out, pairs, scale, adapter=adapter, origin=origin, force=force, log=say,
                                protected=protected)
    record = result.record
    click.echo(f"wrote {result.out}: {what} {record['operation']}d"
               + (f" (scale {scale:g})" if record["operation"] != "erase" else "")
               + f" in {len(result.tensors)} layer(s) of {record['source']['model']}; record in "
               + f"{result.out / 'kneuron_edit.json'}")
