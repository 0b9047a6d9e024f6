"""Ablation modes of a suppressed unit: what its activation ``O^l[..., i]`` (the input of ``down_proj``) is
replaced with while captioning. Pure compute: images and a model in, tensors out.

- ``zero`` (the paper): 0 at every position and decoding step.
- ``mean``: the unit's mean activation over a reference set of images, per position kind: ``image`` (the image
  tokens of the prompt), ``prompt`` (the other prompt positions) and ``generated`` (the fed-back tokens of the
  reference images' own unmodified greedy captions, up to the stop token).
- ``resample``: the unit's activation on another image of the reference set (a donor drawn per evaluated image
  with a seeded generator): at prompt position ``p`` the donor's activation at ``p`` (the prompt is shared, so
  positions align), at a generated position the donor's mean over its own generated positions.

`record_reference` captures what ``mean`` and ``resample`` need in one unmodified greedy generate per batch of
reference images, with plain forward pre-hooks on ``down_proj``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.interventions import ABLATIONS
from kneuron.engine.models.base import VLMAdapter

#: position kinds of the mean ablation, in the order of `ActivationReference.means`' second axis
POSITION_KINDS: tuple[str, ...] = ("image", "prompt", "generated")


@dataclass
class ActivationReference:
    """Activations of the reference images, float32 on the CPU.

    prompt: ``[N_ref, L, P, d_ff]`` at the P prompt positions. generated: ``[N_ref, L, d_ff]`` mean over each
    image's generated positions (its prompt's last position where the caption is empty). image_positions:
    ``[n_image_tokens]`` positions of the image tokens within the prompt. n_generated: ``[N_ref]`` generated
    positions averaged per image. Memory: ``N_ref x L x P x d_ff`` floats (the prompt activations resample needs).
    """

    prompt: torch.Tensor
    generated: torch.Tensor
    image_positions: torch.Tensor
    n_generated: list[int]
    _means: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def prompt_length(self) -> int:
        return int(self.prompt.shape[2])

    def kind_of_positions(self) -> torch.Tensor:
        """``long [P]``: index into `POSITION_KINDS` of each prompt position (image or prompt)."""
        kinds = torch.ones(self.prompt_length, dtype=torch.long)
        kinds[self.image_positions.cpu()] = 0
        return kinds

    def means(self) -> torch.Tensor:
        """``[L, 3, d_ff]``: mean activation per position kind (`POSITION_KINDS`), over images and positions
        (computed once)."""
        if self._means is None:
            self._means = self._compute_means()
        return self._means

    def _compute_means(self) -> torch.Tensor:
        kinds = self.kind_of_positions()
        image = self.prompt[:, :, kinds == 0].mean(dim=(0, 2))
        prompt = self.prompt[:, :, kinds == 1].mean(dim=(0, 2)) if bool((kinds == 1).any()) else image
        weights = torch.tensor(self.n_generated, dtype=torch.float32)  # pooled over every generated position
        if float(weights.sum()) == 0:  # no caption has a token: the prompts' last positions stand in
            weights = torch.ones_like(weights)
        generated = (self.generated * weights[:, None, None]).sum(0) / weights.sum()
        return torch.stack([image, prompt, generated], dim=1)


class _Recorder:
    """Forward pre-hook on one layer's ``down_proj`` during a KV-cached generate: keeps the prompt pass
    ``[B, P, d_ff]`` and each later step's ``[B, d_ff]``."""

    def __init__(self) -> None:
        self.prompt: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().float().cpu()
        if self.prompt is None:
            self.prompt = x
        else:
            self.steps.append(x[:, -1])


def record_reference(adapter: VLMAdapter, images: Sequence[Image.Image], batch_size: int = 16,
                     **generate_kwargs: Any) -> ActivationReference:
    """`ActivationReference` of ``images``: one unmodified greedy generate per batch under recording hooks."""
    if not images:
        raise KneuronError("the ablation's reference set has no images")
    prompts: list[torch.Tensor] = []
    generated: list[torch.Tensor] = []
    counts: list[int] = []
    positions: torch.Tensor | None = None
    for start in range(0, len(images), batch_size):
        batch = list(images[start:start + batch_size])
        prepared = adapter.prepare(batch)
        args, kwargs = adapter.generate_call(prepared, **generate_kwargs)
        hooks = [_Recorder() for _ in range(adapter.n_layers)]
        with adapter.neuron_hooks(dict(enumerate(hooks))), torch.no_grad():
            out = getattr(adapter.model, adapter.generate_method)(*args, **kwargs)
        rows = adapter.new_tokens(prepared, out).tolist()
        lengths = [len(adapter.caption_ids(row)) for row in rows]
        prompt = torch.stack([h.prompt for h in hooks], dim=1)  # type: ignore[misc]  # [B, L, P, d_ff]
        if positions is not None and prompt.shape[2] != prompts[0].shape[2]:
            raise KneuronError("reference images have prompts of different lengths; mean/resample ablation needs "
                               "one shared prompt")
        positions = prepared.image_positions.cpu()
        steps = (torch.stack([torch.stack(h.steps, dim=1) for h in hooks], dim=1) if hooks[0].steps
                 else torch.zeros(len(batch), adapter.n_layers, 0, adapter.d_ff))  # [B, L, S, d_ff]
        for row, n in enumerate(lengths):
            n = min(n, steps.shape[2])
            generated.append(steps[row, :, :n].mean(dim=1) if n else prompt[row, :, -1])
            counts.append(n)
        prompts.append(prompt)
    assert positions is not None
    return ActivationReference(prompt=torch.cat(prompts), generated=torch.stack(generated),
                               image_positions=positions, n_generated=counts)


def donors(n_images: int, n_reference: int, seed: int) -> list[int]:
    """The reference image (index) whose activations replace those of evaluated image ``i``, for each i: one
    seeded draw per image index, so the same image gets the same donor under every neuron set."""
    if n_reference < 1:
        raise KneuronError("resample ablation needs at least one reference image")
    return [int(np.random.default_rng([int(seed), i]).integers(n_reference)) for i in range(n_images)]


@dataclass
class Ablation:
    """How suppressed units are replaced: ``mode`` in `ABLATIONS`; ``reference`` for mean / resample; ``seed``
    of the resample donors."""

    mode: str = "zero"
    reference: ActivationReference | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ABLATIONS:
            raise KneuronError(f"unknown ablation {self.mode!r}; known: {', '.join(ABLATIONS)}")
        if self.mode != "zero" and self.reference is None:
            raise KneuronError(f"{self.mode} ablation needs a reference set of images")


__all__ = ["ABLATIONS", "POSITION_KINDS", "Ablation", "ActivationReference", "donors", "record_reference"]
