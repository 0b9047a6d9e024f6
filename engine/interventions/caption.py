"""Captioning, optionally with a set of FFN neurons suppressed (zeroed) at every position and decoding step.

Every step that needs captions uses this module: ingest (the model's own caption), the suppression
evaluation, the baselines' identification captions and the quality check.

Greedy decoding with the KV cache on, batched (rows share the prompt, so no padding). The intervention is the
one of `kneuron.engine.interventions.multiset.caption_under_sets` (a forward pre-hook on ``down_proj`` setting
``O^l[..., units] = 0``) with a single set.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from kneuron.engine.interventions.multiset import Captions, caption_under_sets
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.neurons import NeuronSet


def caption_images(adapter: VLMAdapter, images: Sequence[Image.Image], neurons: NeuronSet | None = None,
                   batch_size: int = 16, **generate_kwargs: Any) -> Captions:
    """Caption ``images`` in batches, with ``neurons`` suppressed; deterministic (greedy). Runs on the torch
    threads `kneuron.engine.runtime.threads.job` gives this model (one for small models unless the user chose a count).

    `KneuronError` for a neuron outside the model, before any captioning.
    """
    return caption_under_sets(adapter, images, [neurons], rows_per_generate=batch_size, **generate_kwargs)[0]


__all__ = ["Captions", "caption_images"]
