"""Caption one list of images under several neuron sets at once: rows = (set, image), one KV-cached greedy
generate per chunk of rows, each row with its own unit mask and replacement values.

    captions = caption_under_sets(adapter, images, [set_a, set_b, None], Ablation("zero"))
    captions[1].texts[i]  # image i with set_b suppressed

The intervention is one forward pre-hook per layer on ``down_proj`` (the neuron site, `VLMAdapter.neuron_hooks`)
that replaces ``O^l[row, pos, units_of_row]`` (`kneuron.engine.interventions.ablation`): 0, the reference mean of the
position's
kind, or a donor image's activation. Rows are independent (the prompt is shared, so no padding), so a row's
caption does not depend on which other rows share its generate. Each image is preprocessed once when the
adapter's inputs have one row per image (its rows are then picked by indexing).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.interventions.ablation import Ablation, donors
from kneuron.engine.models.base import PreparedBatch, VLMAdapter
from kneuron.engine.runtime.threads import job
from kneuron.engine.signals.neurons import NeuronSet, check_neurons


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


class _Gathered:
    """Inputs of every image prepared once; `rows` picks a chunk's rows by indexing the per-image tensors."""

    def __init__(self, prepared: PreparedBatch, per_image: set[int | str]) -> None:
        self.prepared, self.per_image = prepared, per_image

    @classmethod
    def of(cls, adapter: VLMAdapter, images: Sequence[Image.Image]) -> _Gathered | None:
        """None unless each tensor input either has one row per image (its first dimension follows the number of
        images: 1 for one image, n for n) or is the same for one image and for all (a shared prompt)."""
        if len(images) < 2:
            return None
        one, every = adapter.prepare(list(images[:1])), adapter.prepare(list(images))
        keys: list[int | str] = [*range(len(every.args)), *every.kwargs]
        per_image: set[int | str] = set()
        for key in keys:
            a = one.args[key] if isinstance(key, int) else one.kwargs.get(key)
            b = every.args[key] if isinstance(key, int) else every.kwargs[key]
            if not isinstance(b, torch.Tensor):
                if a != b and not (a is None and b is None):
                    return None
            elif isinstance(a, torch.Tensor) and a.ndim >= 1 and a.shape[0] == 1 and b.shape[0] == len(images) \
                    and a.shape[1:] == b.shape[1:]:
                per_image.add(key)
            elif not (isinstance(a, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))):
                return None
        return cls(every, per_image)

    def rows(self, rows: list[int]) -> PreparedBatch:
        """The inputs of ``rows`` (image indices, repeats allowed)."""
        def pick(key: int | str, value: Any) -> Any:
            return value[torch.as_tensor(rows, device=value.device)] if key in self.per_image else value
        p = self.prepared
        return dataclasses.replace(p, args=tuple(pick(i, v) for i, v in enumerate(p.args)),
                                   kwargs={k: pick(k, v) for k, v in p.kwargs.items()}, batch_size=len(rows))


def _generate_rows(adapter: VLMAdapter, prepared: PreparedBatch, row_images: list[int],
                   row_sets: list[NeuronSet], ablation: Ablation, donor_of: list[int] | None,
                   **generate_kwargs: Any) -> torch.Tensor:
    """New tokens ``[R, T_new]`` of one chunk of rows (row r: image ``row_images[r]`` under ``row_sets[r]``);
    ``prepared``: the chunk's inputs, one row per row."""
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
                       on_rows: Callable[[int], None] | None = None, first_image: int = 0,
                       **generate_kwargs: Any) -> list[Captions]:
    """Captions of ``images`` under each of ``sets`` (None or empty: the plain model), one `Captions` per set.

    Rows are (set, image) in set-major order, captioned ``rows_per_generate`` at a time; greedy and
    deterministic; token for token what each set gives alone. ``on_rows(n)`` is called after each generate
    with its number of rows (progress). ``first_image``: the index of ``images[0]`` in a longer list that is
    captioned piece by piece (resample draws each image's donor from its index, so a piece starting at
    ``first_image`` gets the donors the whole list gives it). `KneuronError` for a neuron outside the model,
    before any captioning.
    """
    ablation = ablation or Ablation()
    if rows_per_generate < 1:
        raise KneuronError(f"rows_per_generate must be >= 1, got {rows_per_generate}")
    clean: list[NeuronSet] = []
    for s in sets:
        check_neurons(adapter, s or {})
        clean.append({layer: list(units) for layer, units in (s or {}).items() if len(units)})
    if first_image < 0:
        raise KneuronError(f"first_image must be >= 0, got {first_image}")
    donor_of = (donors(first_image + len(images), int(ablation.reference.prompt.shape[0]), ablation.seed)[first_image:]
                if ablation.mode == "resample" and ablation.reference is not None else None)
    rows = [(k, i) for k in range(len(clean)) for i in range(len(images))]
    everything = _Gathered.of(adapter, images) if len(clean) > 1 else None
    texts: list[list[str]] = [[] for _ in clean]
    ids: list[list[list[int]]] = [[] for _ in clean]
    with job(adapter.model):  # the thread policy's count for generation on this model (kneuron.engine.runtime.threads)
        for start in range(0, len(rows), rows_per_generate):
            chunk = rows[start:start + rows_per_generate]
            picked = [i for _, i in chunk]
            prepared = (everything.rows(picked) if everything is not None
                        else adapter.prepare([images[i] for i in picked]))
            new = _generate_rows(adapter, prepared, picked, [clean[k] for k, _ in chunk], ablation, donor_of,
                                 **generate_kwargs)
            for (k, _), row in zip(chunk, new.tolist(), strict=True):
                ids[k].append(adapter.caption_ids(row))
                texts[k].append(adapter.caption_text(row))
            if on_rows is not None:
                on_rows(len(chunk))
    return [Captions(texts=t, token_ids=i) for t, i in zip(texts, ids, strict=True)]


__all__ = ["Captions", "caption_under_sets"]
