"""Click options shared by the commands that pick a neuron set (`decode`, `heatmap`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def neuron_set_options(concept_help: str, set_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--warehouse --run --concept --method --set-id --neuron``: where the neurons come from."""
    options = [
        click.option("--warehouse", "warehouse_path", type=click.Path(file_okay=False),
                     help="Warehouse directory [default: $KNEURON_WAREHOUSE or ./kneuron-warehouse]."),
        click.option("--run", "run_id", metavar="RUN_ID", help="Run [default: the latest run]."),
        click.option("--concept", metavar="C", help=concept_help),
        click.option("--method", default="two_stage", show_default=True,
                     help="Method of the concept's neuron set."),
        click.option("--set-id", metavar="ID", help=set_help),
        click.option("--neuron", "neurons", multiple=True, metavar="L:U",
                     help="A neuron layer:unit (repeatable)."),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
