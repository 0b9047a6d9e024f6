"""Click options shared by the commands: ``--warehouse`` (every command that reads or writes one), the options
and input checks of the commands that pick a neuron set (`decode`, `heatmap`, `caption`), and the engine and Ray
options of the steps that can run on Ray (`ingest`, `suppress`)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

#: ``--warehouse``, the same for every command (a directory, or a URI for the commands that read)
warehouse_option = click.option("--warehouse", "warehouse_path", type=click.Path(file_okay=False), default=None,
                                help="Warehouse directory [default: $KNEURON_WAREHOUSE or ./kneuron-warehouse].")


def neuron_set_options(concept_help: str, set_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--warehouse --run --concept --method --set --neuron``: where the neurons come from.

    The command receives ``set_id`` (from ``--set SET_ID``, or its hidden old spelling ``--set-id``).
    """
    options = [
        warehouse_option,
        click.option("--run", "run_id", metavar="RUN_ID", help="Run [default: the latest run]."),
        click.option("--concept", metavar="C", help=concept_help),
        click.option("--method", default="two_stage", show_default=True,
                     help="Method of the concept's neuron set."),
        click.option("--set", "set_id", metavar="SET_ID", help=set_help),
        click.option("--set-id", "set_id_alias", metavar="SET_ID", hidden=True, help="Old spelling of --set."),
        click.option("--neuron", "neurons", multiple=True, metavar="L:U",
                     help="A neuron layer:unit (repeatable)."),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def merged(*args: Any, set_id_alias: str | None = None, **kwargs: Any) -> Any:
            if set_id_alias is not None:
                if kwargs.get("set_id") not in (None, set_id_alias):
                    from kneuron.engine.errors import KneuronError

                    raise KneuronError("give one set: --set and --set-id (its old spelling) name different sets")
                kwargs["set_id"] = set_id_alias
            return command(*args, **kwargs)

        wrapped: Callable[..., Any] = merged
        for option in reversed(options):
            wrapped = option(wrapped)
        return wrapped

    return decorate


def require_neuron_choice(neurons: tuple[str, ...], set_id: str | None, concept: str | None) -> None:
    """`KneuronError` unless the options name neurons one way: ``--neuron``s, ``--set`` or ``--concept``."""
    from kneuron.engine.errors import KneuronError

    if neurons and set_id:
        raise KneuronError("give either --neuron or --set, not both")
    if not (neurons or set_id or concept):
        raise KneuronError("say which neurons: --neuron L:U, --set SET_ID or --concept C [--method M]")


def open_image(path: str) -> Any:
    """An RGB PIL image from ``path``; `KneuronError` when it is missing or unreadable (`kneuron.api_model`)."""
    from kneuron.api_model import open_image as load

    return load(path)


def deprecated_alias(old: str, target: str, new: str,
                     **option: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A hidden option ``old`` (an old spelling kept for one release) that sets the parameter ``target`` of the
    option ``new``, with a one-line note on stderr naming the new spelling. Giving both with different values
    is a `KneuronError`. ``option``: click option settings of the old spelling (``type``, ``multiple``, ...)."""
    dest = f"old_{old.lstrip('-').replace('-', '_')}"

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def merged(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(dest, None)
            if value is not None and value != ():
                from click.core import ParameterSource

                from kneuron.engine.errors import KneuronError

                click.echo(f"kneuron: note: {old} is deprecated; use {new} (the old spelling goes in the next "
                           f"release)", err=True)
                ctx = click.get_current_context()
                if ctx.get_parameter_source(target) == ParameterSource.COMMANDLINE and kwargs.get(target) != value:
                    raise KneuronError(f"give one of {new} and {old} (its old spelling), not both")
                kwargs[target] = value
            return command(*args, **kwargs)

        return click.option(old, dest, hidden=True, default=None, help=f"Old spelling of {new}.", **option)(merged)

    return decorate


#: help of ``--device`` (every command that loads a model)
DEVICE_HELP = "cpu, cuda, cuda:1, mps, ... (auto: CUDA when available, else cpu)."


def ray_options(actor: str, engine_help: str, cpus_default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--engine --ray-address --workers --gpus-per-worker --cpus-per-worker`` (the fields of
    `kneuron.engine.pipelines.ray_cluster.RayOptions`). ``actor``: what a worker is (``recorder``, ``captioner``);
    ``engine_help``: what each engine does; ``cpus_default``: how the step picks the CPUs per worker."""
    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help=engine_help),
        click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
                     help="Ray cluster to join (--engine ray) [default: start a local Ray instance]."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help=f"{actor.capitalize()} actors (--engine ray); each loads the model once."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
                     help=f"GPUs per {actor} (--engine ray) [default: 1 when the cluster has GPUs]."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None,
                     help=f"CPUs per {actor} (--engine ray) [default: {cpus_default}]."),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
