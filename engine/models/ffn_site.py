"""The FFN neuron site of any gated-MLP decoder, found by module structure (not by class name).

kneuron's neuron ``(l, i)`` is unit ``i`` of the input of ``down_proj`` in decoder layer ``l``, for any text
model whose MLP is ``down_proj(act(gate_proj(x)) * up_proj(x))``: LLaMA, Mistral, Qwen2/2.5/3, Gemma 2/3 (GELU
instead of SiLU), SmolLM, ... The site is found the same way for all of them:

1. the decoder layers: the ``layers`` ModuleList of the text model (else the one ModuleList of
   ``num_hidden_layers`` blocks under it, e.g. GPT-2's ``h`` or OPT's ``decoder.layers``, so that the error can
   name what the layers hold);
2. in every layer, exactly one module each named ``gate_proj``, ``up_proj`` and ``down_proj``, all three the
   only parameterised children of one direct child of the layer (normally ``mlp``), ``down_proj`` an
   ``nn.Linear`` whose ``in_features`` (``d_ff``) equals the other two's ``out_features``.

Anything else (GPT-2's ``c_fc``/``c_proj``, OPT's ``fc1``/``fc2``, a fused ``gate_up_proj`` as in Phi-3, a
mixture of experts, also one with a gated shared expert as in Qwen2-MoE) is one `KneuronError` line naming the
architecture.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from kneuron.engine.errors import KneuronError

GATED_NAMES = ("gate_proj", "up_proj", "down_proj")
#: what kneuron needs, said once in every error
NEED = "kneuron reads the input of down_proj in a gated MLP down_proj(act(gate_proj(x)) * up_proj(x))"


@dataclass(frozen=True)
class FFNSite:
    """Where the neurons are, as attribute paths that work on the model and on its nnsight Envoy alike.

    ``layers_path``: from the adapter's model root to the decoder-layer ModuleList (e.g.
    ``("model", "language_model", "layers")``); ``mlp_path``: from one decoder layer to its ``down_proj``
    (``("mlp", "down_proj")``); ``d_ff``: units per layer; ``architecture``: e.g. ``"qwen2 (Qwen2Model)"``.
    """

    layers_path: tuple[str, ...]
    mlp_path: tuple[str, ...]
    n_layers: int
    d_ff: int
    architecture: str

    def layers(self, root: Any) -> Any:
        """The decoder layers of ``root`` (the model or its Envoy)."""
        return walk(root, self.layers_path)

    def down_proj(self, root: Any, layer: int) -> Any:
        """``down_proj`` of ``layer``; its input ``[batch, pos, d_ff]`` is the neuron activation ``O^l``."""
        return walk(self.layers(root)[layer], self.mlp_path)


def walk(root: Any, path: Sequence[str]) -> Any:
    """``root.a.b.c`` for ``path = ("a", "b", "c")``."""
    out = root
    for name in path:
        out = getattr(out, name)
    return out


def split_path(dotted: str) -> tuple[str, ...]:
    return tuple(part for part in dotted.split(".") if part)


def architecture_name(text_model: nn.Module) -> str:
    """``model_type (ClassName)`` of a text model, e.g. ``"gemma2 (Gemma2Model)"``."""
    model_type = getattr(getattr(text_model, "config", None), "model_type", None) or "?"
    return f"{model_type} ({type(text_model).__name__})"


def _decoder_layers(text_model: nn.Module, architecture: str) -> tuple[tuple[str, ...], nn.ModuleList]:
    layers = getattr(text_model, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return ("layers",), layers
    config = getattr(text_model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    found = [(name, module) for name, module in text_model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) and (n is None or len(module) == n)]
    if not found:
        raise KneuronError(f"text model {architecture} has no decoder-layer list: {NEED}")
    name, module = min(found, key=lambda item: item[0].count("."))  # the outermost list of blocks
    return split_path(name), module


def _mlp_modules(layer: nn.Module) -> str:
    """``name (Class)`` of the layer's parameterised modules (depth <= 2) that are neither attention nor norm."""
    names = [f"{name} ({type(module).__name__})" for name, module in layer.named_modules()
             if name and name.count(".") <= 1 and "attn" not in name and "norm" not in name
             and "attention" not in name and "Norm" not in type(module).__name__
             and any(True for _ in module.parameters())]
    return ", ".join(names) or "none"


def gated_mlp_path(layer: nn.Module, architecture: str, index: int = 0) -> tuple[tuple[str, ...], int]:
    """(path from ``layer`` to its ``down_proj``, ``d_ff``) of a gated MLP, else `KneuronError`."""
    found: dict[str, list[tuple[str, nn.Module]]] = {name: [] for name in GATED_NAMES}
    for name, module in layer.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in found:
            found[leaf].append((name, module))
    where = f"text model {architecture}: decoder layer {index} ({type(layer).__name__})"
    if any("gate_up_proj" in name for name, _ in layer.named_modules()):
        raise KneuronError(f"{where} has a fused gate_up_proj, not separate gate_proj/up_proj: {NEED}")
    counts = {name: len(hits) for name, hits in found.items()}
    if any(count > 1 for count in counts.values()):
        raise KneuronError(f"{where} has {counts['down_proj']} down_proj modules (mixture of experts?), "
                           f"not one gated MLP: {NEED}")
    missing = [name for name, count in counts.items() if count == 0]
    if missing:
        raise KneuronError(f"{where} has no {'/'.join(missing)} (its MLP modules: {_mlp_modules(layer)}): {NEED}")
    (gate_name, gate), = found["gate_proj"]
    (up_name, up), = found["up_proj"]
    (down_name, down), = found["down_proj"]
    parents = {name.rpartition(".")[0] for name in (gate_name, up_name, down_name)}
    if len(parents) != 1:
        raise KneuronError(f"{where}: gate_proj, up_proj and down_proj are not in one MLP "
                           f"({gate_name}, {up_name}, {down_name}): {NEED}")
    (parent,) = parents
    mlp = walk(layer, split_path(parent)) if parent else layer
    others = [name for name, child in mlp.named_children()
              if name not in GATED_NAMES and any(True for _ in child.parameters())]
    if not parent or "." in parent or others:
        raise KneuronError(f"{where}: its gate_proj/up_proj/down_proj ({parent or 'the layer itself'}) are not the "
                           f"whole MLP (its MLP modules: {_mlp_modules(layer)}; mixture of experts?): {NEED}")
    if not isinstance(down, nn.Linear):
        raise KneuronError(f"{where}: down_proj is a {type(down).__name__}, not nn.Linear: {NEED}")
    d_ff = int(down.in_features)
    widths = [int(getattr(m, "out_features", -1)) for m in (gate, up)]
    if widths != [d_ff, d_ff]:
        raise KneuronError(f"{where}: gate_proj/up_proj give {widths[0]}/{widths[1]} units but down_proj reads "
                           f"{d_ff}: {NEED}")
    return split_path(down_name), d_ff


def find_ffn_site(root: nn.Module, text_model_path: Sequence[str], architecture: str | None = None) -> FFNSite:
    """The FFN site of the text model at ``root.<text_model_path>`` (every layer checked), else `KneuronError`.

    ``root``: the adapter's model (a real or a meta-device skeleton); ``text_model_path``: where its decoder
    stack (the module holding the layers and the final norm) sits, e.g. ``("model", "language_model")``.
    """
    try:
        text_model = walk(root, text_model_path)
    except AttributeError:
        found: Any = root
        for name in text_model_path:  # the deepest module that exists names the architecture
            if not hasattr(found, name):
                break
            found = getattr(found, name)
        raise KneuronError(f"text model {architecture or architecture_name(found)} has no decoder stack at "
                           f"{'.'.join(text_model_path)} (encoder-decoder?): {NEED}") from None
    architecture = architecture or architecture_name(text_model)
    layers_rel, layers = _decoder_layers(text_model, architecture)
    paths = {gated_mlp_path(layer, architecture, index) for index, layer in enumerate(layers)}
    if len(paths) != 1:
        raise KneuronError(f"text model {architecture}: decoder layers differ in their MLP "
                           f"({sorted(p for p, _ in paths)}): {NEED}")
    (mlp_path, d_ff), = paths
    return FFNSite(layers_path=tuple(text_model_path) + layers_rel, mlp_path=mlp_path, n_layers=len(layers),
                   d_ff=d_ff, architecture=architecture)


__all__ = ["FFNSite", "GATED_NAMES", "architecture_name", "find_ffn_site", "gated_mlp_path", "split_path", "walk"]
