"""Neurons and neuron sets: the one place that says what a neuron ``(layer, unit)`` is and how sets are written.

A neuron is unit ``i`` of layer ``l``'s FFN (the ``i``-th input of ``mlp.down_proj``). Sets travel in two
shapes: a list of pairs ``[(layer, unit), ...]`` and a mapping ``{layer: [units]}`` (`NeuronSet`, what the
suppression hook indexes with). Text form on the command line: ``"L:U"``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from kneuron.engine.errors import KneuronError

#: a neuron set: layer -> unit indices
NeuronSet = Mapping[int, Sequence[int]]


class HasFFNShape(Protocol):
    """Anything that knows its FFN shape (a model adapter)."""

    @property
    def n_layers(self) -> int: ...

    @property
    def d_ff(self) -> int: ...


def parse_neuron(text: str) -> tuple[int, int]:
    """``"L:U"`` (layer:unit, e.g. ``"12:3071"``) -> ``(12, 3071)``; `KneuronError` on anything else."""
    layer, sep, unit = text.strip().partition(":")
    if not sep or not layer.strip().isdigit() or not unit.strip().isdigit():
        raise KneuronError(f"bad neuron {text!r}; expected LAYER:UNIT, e.g. 12:3071")
    return int(layer), int(unit)


def neuron_pairs(neurons: NeuronSet | Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``{layer: units}`` or ``[(layer, unit), ...]`` -> sorted unique ``[(layer, unit), ...]``."""
    if isinstance(neurons, Mapping):
        pairs = [(int(layer), int(unit)) for layer, units in neurons.items() for unit in units]
    else:
        pairs = [(int(layer), int(unit)) for layer, unit in neurons]
    return sorted(set(pairs))


def as_neuron_set(pairs: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """``[(layer, unit), ...]`` -> ``{layer: sorted units}`` (layers in ascending order)."""
    out: dict[int, set[int]] = {}
    for layer, unit in pairs:
        out.setdefault(int(layer), set()).add(int(unit))
    return {layer: sorted(units) for layer, units in sorted(out.items())}


def check_neurons(model: HasFFNShape, neurons: NeuronSet | Iterable[tuple[int, int]]) -> None:
    """`KneuronError` naming the first ``(layer, unit)`` outside the model (``n_layers x d_ff`` units)."""
    n_layers, d_ff = model.n_layers, model.d_ff
    for layer, unit in neuron_pairs(neurons):
        if not (0 <= layer < n_layers and 0 <= unit < d_ff):
            raise KneuronError(f"neuron {layer}:{unit} is outside the model ({n_layers} layers x {d_ff} units)")
