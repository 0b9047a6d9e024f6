"""Caption one list of images under several neuron sets at once: rows = (set, image), each row with its own unit
mask and replacement values, many rows per KV-cached greedy decode.

    captions = caption_under_sets(adapter, images, [set_a, set_b, None], Ablation("zero"))
    captions[1].texts[i]  # image i with set_b suppressed

The intervention is one forward pre-hook per layer on ``down_proj`` (the neuron site, `VLMAdapter.neuron_hooks`)
that replaces ``O^l[row, pos, units_of_row]`` (`kneuron.engine.interventions.ablation`): 0, the reference mean of the
position's kind, or a donor image's activation. Rows are independent (the prompt is shared, so no padding), so a
row's caption does not depend on which other rows share its decode.

Two ways to decode, the same tokens, rows in set-major order either way: where the adapter hands out its language
model's inputs (`VLMAdapter.generation_embeds`) and that model's generate is plain greedy, every image is embedded
once and `kneuron.engine.interventions.greedy.decode_rows` drops a row from the batch as soon as it stops;
otherwise the model's own generate runs on each chunk of rows (each image preprocessed once where the adapter's
inputs allow).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.interventions.ablation import Ablation, donors
from kneuron.engine.interventions.greedy import decode_rows, plain_greedy
from kneuron.engine.models.base import PreparedBatch, VLMAdapter
from kneuron.engine.runtime.threads import job
from kneuron.engine.signals.neurons import NeuronSet, check_neurons


@dataclass
class Captions:
    """Generated captions: ``texts[b]`` and the raw new tokens ``token_ids[b]`` (stop token excluded)."""

    texts: list[str]
    token_ids: list[list[int]]


class _RowHook:
    """Forward pre-hook of one layer for one generate: ``x [R', T, d_ff]`` -> x with ``mask [R, d_ff]`` units
    replaced, R' the rows the forward computes (all R, or those `follow` names). ``values(start, T)`` gives the
    replacement ``[R, T, d_ff]`` (None: zeros)."""

    def __init__(self, mask: torch.Tensor, values: Any) -> None:
        self.mask, self.values, self.seen = mask, values, 0
        self.rows: torch.Tensor | None = None  # [R'] on the CPU; None: all rows
        self._mask_now: torch.Tensor | None = None  # [R', 1, d_ff] on the activations' device

    def follow(self, rows: torch.Tensor) -> None:
        """The next forwards compute ``rows [R']`` of the R rows (a decode loop that drops finished rows)."""
        self.rows, self._mask_now = rows.cpu(), None

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        start = self.seen if x.shape[1] == 1 else 0  # a multi-token call is the (re)fed prompt and more
        self.seen = start + x.shape[1]
        if self._mask_now is None or self._mask_now.device != x.device:
            picked = self.mask if self.rows is None else self.mask[self.rows]
            self._mask_now = picked.to(x.device)[:, None, :]
        if self.values is None:
            out = x.masked_fill(self._mask_now, 0)
        else:
            values = self.values(start, x.shape[1])
            values = values if self.rows is None else values[self.rows]
            out = torch.where(self._mask_now, values.to(device=x.device, dtype=x.dtype), x)
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


def _row_hooks(adapter: VLMAdapter, row_images: list[int], row_sets: list[NeuronSet], ablation: Ablation,
               donor_of: list[int] | None, prompt_length: int) -> dict[int, _RowHook]:
    """One `_RowHook` per layer some row's set touches (row r: image ``row_images[r]`` under ``row_sets[r]``)."""
    layers = sorted({layer for s in row_sets for layer, units in s.items() if len(units)})
    hooks = {}
    for layer in layers:
        mask = torch.zeros(len(row_sets), adapter.d_ff, dtype=torch.bool)
        for r, s in enumerate(row_sets):
            units = list(s.get(layer, ()))
            if units:
                mask[r, torch.as_tensor(units, dtype=torch.long)] = True
        hooks[layer] = _RowHook(mask, _replacement(ablation, layer, row_images, donor_of, prompt_length))
    return hooks


def _generate_rows(adapter: VLMAdapter, prepared: PreparedBatch, row_images: list[int],
                   row_sets: list[NeuronSet], ablation: Ablation, donor_of: list[int] | None,
                   **generate_kwargs: Any) -> list[list[int]]:
    """New tokens of one chunk of rows by the model's own generate (row r: image ``row_images[r]`` under
    ``row_sets[r]``); ``prepared``: the chunk's inputs, one row per row."""
    args, kwargs = adapter.generate_call(prepared, **generate_kwargs)
    hooks = _row_hooks(adapter, row_images, row_sets, ablation, donor_of, prepared.prompt_length)
    with adapter.neuron_hooks(hooks), torch.no_grad():
        out = getattr(adapter.model, adapter.generate_method)(*args, **kwargs)
    return cast("list[list[int]]", adapter.new_tokens(prepared, out).tolist())


class _OwnPlan(NamedTuple):
    """What the own decoding loop needs: every image's language-model inputs ``embeds [n_images, P, d_model]``,
    ``P`` (``prompt_length``), and the generate settings it reproduces."""

    embeds: torch.Tensor
    prompt_length: int
    max_new_tokens: int
    stop_ids: list[int]


#: generate keyword arguments the own decoding loop reproduces
_GREEDY_KWARGS = frozenset({"max_new_tokens", "do_sample", "num_beams", "eos_token_id", "pad_token_id"})


def _own_plan(adapter: VLMAdapter, images: Sequence[Image.Image], images_per_call: int,
              generate_kwargs: dict[str, Any]) -> _OwnPlan | None:
    """The `_OwnPlan` when captions may be decoded by `kneuron.engine.interventions.greedy`: the language model's
    generate is plain greedy with these settings and the adapter hands out its inputs
    (`VLMAdapter.generation_embeds`; every image embedded once, ``images_per_call`` at a time); None when the
    model's own generate must run (nothing embedded then, the first batch of images only preprocessed)."""
    if not images or not plain_greedy(adapter.language_model):
        return None
    first = adapter.prepare(list(images[:images_per_call]))
    _, kwargs = adapter.generate_call(first, **generate_kwargs)
    if set(kwargs) - _GREEDY_KWARGS or kwargs.get("do_sample") or kwargs.get("num_beams", 1) != 1:
        return None
    parts = [adapter.generation_embeds(first)]
    if parts[0] is None:
        return None
    for start in range(images_per_call, len(images), images_per_call):
        parts.append(adapter.generation_embeds(adapter.prepare(list(images[start:start + images_per_call]))))
        if parts[-1] is None:  # the first images' were handed out: an adapter must not change its mind
            raise KneuronError(f"{type(adapter).__name__}.generation_embeds returned None for some images only")
    stops = kwargs.get("eos_token_id")
    stop_ids = [stops] if isinstance(stops, int) else list(stops or [])
    return _OwnPlan(torch.cat(cast("list[torch.Tensor]", parts)), first.prompt_length,
                    int(kwargs.get("max_new_tokens", adapter.max_new_tokens)), stop_ids)


def _decode_own(adapter: VLMAdapter, plan: _OwnPlan, sets: list[NeuronSet], ablation: Ablation,
                donor_of: list[int] | None, rows_per_generate: int,
                on_rows: Callable[[int], None] | None) -> list[list[list[int]]]:
    """Token ids ``[set][image]`` by the own decoding loop: rows = (set, image) in set-major order (a set whose
    captions run long shares few decodes with the others), finished rows dropped from the batch."""
    every = plan.embeds
    rows = [(k, i) for k in range(len(sets)) for i in range(len(every))]
    out: list[list[list[int]]] = [[] for _ in sets]
    for start in range(0, len(rows), rows_per_generate):
        chunk = rows[start:start + rows_per_generate]
        picked = [i for _, i in chunk]
        hooks = _row_hooks(adapter, picked, [sets[k] for k, _ in chunk], ablation, donor_of, plan.prompt_length)

        def follow(active: torch.Tensor, hooks: dict[int, _RowHook] = hooks) -> None:
            for hook in hooks.values():
                hook.follow(active)
        with adapter.neuron_hooks(hooks):
            made = decode_rows(adapter.language_model, every[torch.as_tensor(picked, device=every.device)],
                               plan.stop_ids, plan.max_new_tokens, follow)
        for (k, _), tokens in zip(chunk, made, strict=True):
            out[k].append(tokens)
        if on_rows is not None:
            on_rows(len(chunk))
    return out


def caption_under_sets(adapter: VLMAdapter, images: Sequence[Image.Image], sets: Sequence[NeuronSet | None],
                       ablation: Ablation | None = None, rows_per_generate: int = 64,
                       on_rows: Callable[[int], None] | None = None, first_image: int = 0,
                       **generate_kwargs: Any) -> list[Captions]:
    """Captions of ``images`` under each of ``sets`` (None or empty: the plain model), one `Captions` per set.

    Rows are (set, image) in set-major order, ``rows_per_generate`` per decode (see the module docstring for the
    two ways to decode); greedy and deterministic; token for token what each set gives alone. ``on_rows(n)`` is
    called after each decode with its number of rows (progress).
    ``first_image``: the index of ``images[0]`` in a longer list that is captioned piece by piece (resample draws
    each image's donor from its index, so a piece starting at ``first_image`` gets the donors the whole list gives
    it). `KneuronError` for a neuron outside the model,
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
    with job(adapter.model):  # the thread policy's count for generation on this model (kneuron.engine.runtime.threads)
        own = _own_plan(adapter, images, rows_per_generate, generate_kwargs)
        if own is not None:
            made = _decode_own(adapter, own, clean, ablation, donor_of, rows_per_generate, on_rows)
        else:
            made = _generate_set_major(adapter, images, clean, ablation, donor_of, rows_per_generate, on_rows,
                                       generate_kwargs)
    return [Captions(texts=[adapter.caption_text(row) for row in rows],
                     token_ids=[adapter.caption_ids(row) for row in rows]) for rows in made]


def _generate_set_major(adapter: VLMAdapter, images: Sequence[Image.Image], sets: list[NeuronSet],
                        ablation: Ablation, donor_of: list[int] | None, rows_per_generate: int,
                        on_rows: Callable[[int], None] | None,
                        generate_kwargs: dict[str, Any]) -> list[list[list[int]]]:
    """Token ids ``[set][image]`` by the model's own generate: rows = (set, image) in set-major order, each image
    preprocessed once where the adapter's inputs allow (`_Gathered`)."""
    rows = [(k, i) for k in range(len(sets)) for i in range(len(images))]
    everything = _Gathered.of(adapter, images) if len(sets) > 1 else None
    out: list[list[list[int]]] = [[] for _ in sets]
    for start in range(0, len(rows), rows_per_generate):
        chunk = rows[start:start + rows_per_generate]
        picked = [i for _, i in chunk]
        prepared = (everything.rows(picked) if everything is not None
                    else adapter.prepare([images[i] for i in picked]))
        new = _generate_rows(adapter, prepared, picked, [sets[k] for k, _ in chunk], ablation, donor_of,
                             **generate_kwargs)
        for (k, _), row in zip(chunk, new, strict=True):
            out[k].append(row)
        if on_rows is not None:
            on_rows(len(chunk))
    return out


__all__ = ["Captions", "caption_under_sets"]
