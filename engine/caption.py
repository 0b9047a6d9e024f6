"""Captioning, optionally with a set of FFN neurons suppressed (zeroed) at every position and decoding step.

Every step that needs captions uses this module: ingest (the model's own caption), the suppression
evaluation, the baselines' identification captions and the quality check.

Greedy decoding with the KV cache on, batched (rows share the prompt, so no padding). The intervention is an
nnsight edit of ``down_proj``'s input ``O^l[..., units] = 0`` applied to every forward of the decode loop.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from engine.models.base import VLMAdapter
from engine.neurons import NeuronSet, check_neurons
from engine.record import traced
from engine.threads import job


@dataclass
class Captions:
    """Generated captions: ``texts[b]`` and the raw new tokens ``token_ids[b]`` (stop token excluded)."""

    texts: list[str]
    token_ids: list[list[int]]


def generate_ids(adapter: VLMAdapter, images: Sequence[Image.Image] | torch.Tensor,
                 neurons: NeuronSet | None = None, **generate_kwargs) -> torch.Tensor:
    """New tokens ``[B, T_new]`` for one batch, with ``neurons`` zeroed (None or empty: the plain model)."""
    prepared = adapter.prepare(images)
    args, kwargs = adapter.generate_call(prepared, **generate_kwargs)
    active = {layer: units for layer, units in (neurons or {}).items() if len(units)}
    if not active:
        with torch.no_grad():
            out = getattr(adapter.model, adapter.generate_method)(*args, **kwargs)
        return adapter.new_tokens(prepared, out)
    device = adapter.device
    index = {layer: torch.as_tensor(list(units), dtype=torch.long, device=device) for layer, units in active.items()}
    model = traced(adapter)
    with warnings.catch_warnings(), model.trace(fn=adapter.generate_method) as tracer:
        # the open-ended step loop ends when generation stops; nnsight warns about that by design
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with tracer.invoke(*args, **kwargs):
            for _step in tracer.all():
                for layer in sorted(index):
                    adapter.neuron_module(model, layer).input[..., index[layer]] = 0
        with tracer.invoke():
            out = tracer.result.save()
    return adapter.new_tokens(prepared, out)


def caption_images(adapter: VLMAdapter, images: Sequence[Image.Image], neurons: NeuronSet | None = None,
                   batch_size: int = 16, **generate_kwargs) -> Captions:
    """Caption ``images`` in batches, with ``neurons`` suppressed; deterministic (greedy). Runs on the torch
    threads `engine.threads.job` gives this model (one for small models unless the user chose a count).

    `KneuronError` for a neuron outside the model, before any captioning.
    """
    check_neurons(adapter, neurons or {})
    texts: list[str] = []
    ids: list[list[int]] = []
    with job(adapter.model):  # the thread policy's count for generation on this model (engine.threads)
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            new = generate_ids(adapter, batch, neurons, **generate_kwargs)
            for row in new.tolist():
                ids.append(adapter.caption_ids(row))
                texts.append(adapter.caption_text(row))
    return Captions(texts=texts, token_ids=ids)
