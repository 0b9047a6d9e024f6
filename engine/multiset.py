"""Caption one list of images under several neuron sets at once: rows = (set, image), one KV-cached greedy
generate per chunk of rows, each row with its own unit mask and replacement values.

    captions = caption_under_sets(adapter, images, [set_a, set_b, None], Ablation("zero"))
    captions[1].texts[i]  # image i with set_b suppressed

The intervention is one forward pre-hook per layer on ``down_proj`` (the neuron site, `VLMAdapter.neuron_hooks`)
that replaces ``O^l[row, pos, units_of_row]`` (`engine.ablation`): 0, the reference mean of the position's
kind, or a donor image's activation. Rows are independent (the prompt is shared, so no padding), so a row's
caption does not depend on which other rows share its generate.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from engine.ablation import Ablation, donors
from engine.errors import KneuronError
from engine.models.base import VLMAdapter
from engine.neurons import NeuronSet, check_neurons
from engine.threads import job


@dataclass
class Captions:
    """Generated captions: ``texts[b]`` and the raw new tokens ``token_ids[b]`` (stop token excluded)."""

    texts: list[str]
    token_ids: list[list[int]]


class _RowHook:
    """Forward pre-hook of one layer for one generate: ``x [R, T, d_ff]`` -> x with ``mask [R, d_ff]`` units
    replaced. ``values(start, T)`` gives the replacement ``[R, T, d_ff]`` (None: zeros)."""

    def __init__(self, mask: torch.Tensor, values: Any) -> None:
        self.mask, self.values, self.seen = mask, values, 0

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        start = self.seen if x.shape[1] == 1 else 0  # a multi-token call is the (re)fed prompt and more
        self.seen = start + x.shape[1]
        mask = self.mask.to(x.device)[:, None, :]
        if self.values is None:
            out = x.masked_fill(mask, 0)
        else:
            out = torch.where(mask, self.values(start, x.shape[1]).to(device=x.device, dtype=x.dtype), x)
        return (out, *args[1:])


def _replacement(ablation: Ablation, layer: int, row_images: list[int], donor_of: list[int] | None,
                 prompt_length: int) -> Any:
    """``values(start, T) -> [R, T, d_ff]`` of ``layer`` for the chunk's rows (None for zero ablation)."""
    if ablation.mode == "zero":
        return None
    ref = ablation.reference
    assert ref is not None
    if ref.prompt_length != prompt_length:
        raise KneuronError(f"the reference images' prompt has {ref.prompt_length} positions, the captioned "
                           f"images' {prompt_length}: {ablation.mode} ablation needs one shared prompt")
    kinds = ref.kind_of_positions()
    if ablation.mode == "mean":
        means = ref.means()[layer]  # [3, d_ff]

        def mean_values(start: int, length: int) -> torch.Tensor:
            pos = torch.arange(start, start + length)
            kind = torch.where(pos < prompt_length, kinds[pos.clamp(max=prompt_length - 1)], 2)
            return means[kind][None].expand(len(row_images), -1, -1)
        return mean_values
    assert donor_of is not None
    rows = torch.tensor([donor_of[i] for i in row_images], dtype=torch.long)
    prompt = ref.prompt[rows, layer]  # [R, P, d_ff]
    generated = ref.generated[rows, layer]  # [R, d_ff]

    def donor_values(start: int, length: int) -> torch.Tensor:
        pos = torch.arange(start, start + length)
        inside = pos < prompt_length
        out = generated[:, None, :].expand(-1, length, -1).clone()
        if bool(inside.any()):
            out[:, inside] = prompt[:, pos[inside]]
        return out
    return donor_values


def _generate_rows(adapter: VLMAdapter, images: Sequence[Image.Image], row_images: list[int],
                   row_sets: list[NeuronSet], ablation: Ablation, donor_of: list[int] | None,
                   **generate_kwargs: Any) -> torch.Tensor:
    """New tokens ``[R, T_new]`` of one chunk of rows (row r: image ``row_images[r]`` under ``row_sets[r]``)."""
    prepared = adapter.prepare([images[i] for i in row_images])
    args, kwargs = adapter.generate_call(prepared, **generate_kwargs)
    layers = sorted({layer for s in row_sets for layer, units in s.items() if len(units)})
    hooks = {}
    for layer in layers:
        mask = torch.zeros(len(row_sets), adapter.d_ff, dtype=torch.bool)
        for r, s in enumerate(row_sets):
            units = list(s.get(layer, ()))
            if units:
                mask[r, torch.as_tensor(units, dtype=torch.long)] = True
        hooks[layer] = _RowHook(mask, _replacement(ablation, layer, row_images, donor_of, prepared.prompt_length))
    with adapter.neuron_hooks(hooks), torch.no_grad():
        out = getattr(adapter.model, adapter.generate_method)(*args, **kwargs)
    return adapter.new_tokens(prepared, out)


def caption_under_sets(adapter: VLMAdapter, images: Sequence[Image.Image], sets: Sequence[NeuronSet | None],
                       ablation: Ablation | None = None, rows_per_generate: int = 64,
                       on_rows: Callable[[int], None] | None = None, **generate_kwargs: Any) -> list[Captions]:
    """Captions of ``images`` under each of ``sets`` (None or empty: the plain model), one `Captions` per set.

    Rows are (set, image) in set-major order, captioned ``rows_per_generate`` at a time; greedy and
    deterministic; token for token what each set gives alone. ``on_rows(n)`` is called after each generate
    with its number of rows (progress). `KneuronError` for a neuron outside the model, before any captioning.
    """
    ablation = ablation or Ablation()
    if rows_per_generate < 1:
        raise KneuronError(f"rows_per_generate must be >= 1, got {rows_per_generate}")
    clean: list[NeuronSet] = []
    for s in sets:
        check_neurons(adapter, s or {})
        clean.append({layer: list(units) for layer, units in (s or {}).items() if len(units)})
    donor_of = (donors(len(images), int(ablation.reference.prompt.shape[0]), ablation.seed)
                if ablation.mode == "resample" and ablation.reference is not None else None)
    rows = [(k, i) for k in range(len(clean)) for i in range(len(images))]
    texts: list[list[str]] = [[] for _ in clean]
    ids: list[list[list[int]]] = [[] for _ in clean]
    with job(adapter.model):  # the thread policy's count for generation on this model (engine.threads)
        for start in range(0, len(rows), rows_per_generate):
            chunk = rows[start:start + rows_per_generate]
            new = _generate_rows(adapter, images, [i for _, i in chunk], [clean[k] for k, _ in chunk], ablation,
                                 donor_of, **generate_kwargs)
            for (k, _), row in zip(chunk, new.tolist()):
                ids[k].append(adapter.caption_ids(row))
                texts[k].append(adapter.caption_text(row))
            if on_rows is not None:
                on_rows(len(chunk))
    return [Captions(texts=t, token_ids=i) for t, i in zip(texts, ids)]


__all__ = ["Captions", "caption_under_sets"]
