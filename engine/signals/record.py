"""Record the two-stage signals of (original, inpainted) image pairs with nnsight.

For ``B`` pairs, one traced forward runs the ``2B`` rows (originals then inpainted, all teacher-forced on the
original's target tokens) and one backward from ``y^c``, the pre-softmax logit of the concept token at the
position that predicts it in each original row. At positions P it reads, for every layer ``l``:

- ``O_o = O^l[:B, P]`` and ``O_i = O^l[B:, P]``  ``[B, P, d_ff]``, where ``O^l`` is ``down_proj``'s input;
- ``g = O_o * dy/dO_o``  ``[B, P, d_ff]`` (GradCAM-style attribution ``g_c``).

Everything is reduced on the model's device (means and maxima over P; top-k units per (layer, position))
before it is copied out, so a 7B model moves ``[B, L, d_ff]`` summaries, not ``[B, L, P, d_ff]`` tensors.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch
from nnsight import NNsight
from PIL import Image

from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.runtime.threads import job


@dataclass(frozen=True)
class RecordConfig:
    """``positions``: P = ``"image"`` tokens (default), every ``"prompt"`` position, or ``"target"``: the one
    position per row whose logits give ``y^c`` (where Pan et al. and Dai et al. read their neurons).
    ``top_k``: units kept per (layer, position) in the sparse token table."""

    positions: str = "image"
    top_k: int = 16


@dataclass(frozen=True)
class Target:
    """Teacher-forced answer tokens for one original image and where the concept token sits in them.

    ``index`` is the position of the concept token within ``tokens`` (it may equal ``len(tokens)`` when the
    concept token follows a fixed answer prefix); ``token_id`` is the concept's first sub-token.
    """

    tokens: tuple[int, ...]
    index: int
    token_id: int
    source: str = "caption"  # "caption" | "prefix"


def choose_target(caption_ids: Sequence[int], concept_ids: Sequence[int], prefix_ids: Sequence[int]) -> Target:
    """The teacher-forced tokens and the place of ``y^c`` for one original image.

    ``caption``: the first place where the concept's sub-tokens occur in the model's own caption; the tokens are
    the caption up to and including the concept's first sub-token. ``prefix``: the concept word is not in the
    caption: teacher-force the answer prefix, ``y^c`` is read right after it.
    """
    caption_ids = [int(t) for t in caption_ids]
    concept_ids = [int(t) for t in concept_ids]
    m = len(concept_ids)
    for j in range(len(caption_ids) - m + 1):
        if caption_ids[j:j + m] == concept_ids:
            return Target(tuple(caption_ids[: j + 1]), j, concept_ids[0], source="caption")
    prefix = tuple(int(t) for t in prefix_ids)
    return Target(prefix, len(prefix), concept_ids[0], source="prefix")


@dataclass
class PairRecord:
    """Reduced signals of ``B`` pairs; float32 on CPU.

    ``o_mean``, ``i_mean``, ``d_max``, ``g_max``, ``g_mean``: ``[B, L, d_ff]``.
    ``top_units``: ``[B, L, P, k]`` units with the largest ``O_o`` at each (layer, position);
    ``top_o``/``top_i``/``top_g``: their ``O_o``, ``O_i``, ``g``. ``positions``: ``[P]`` sequence positions,
    or ``[B, P]`` when they differ per row (``"target"``).
    ``target_logit``: ``[B]`` the value of ``y^c``; ``target_position``: ``[B]`` where it was read.
    """

    o_mean: torch.Tensor
    i_mean: torch.Tensor
    d_max: torch.Tensor
    g_max: torch.Tensor
    g_mean: torch.Tensor
    top_units: torch.Tensor
    top_o: torch.Tensor
    top_i: torch.Tensor
    top_g: torch.Tensor
    positions: torch.Tensor
    target_logit: torch.Tensor
    target_position: torch.Tensor


def traced(adapter: VLMAdapter) -> NNsight:
    """The adapter's model wrapped by nnsight (created once per adapter)."""
    envoy = getattr(adapter, "_nnsight_envoy", None)
    if envoy is None:
        with warnings.catch_warnings():  # Q-Former submodules named `output` are renamed E_output: harmless
            warnings.simplefilter("ignore", UserWarning)
            envoy = NNsight(adapter.model)
        adapter._nnsight_envoy = envoy  # type: ignore[attr-defined]
    return envoy


def target_positions(prompt_length: int, targets: Sequence[Target]) -> torch.Tensor:
    """Sequence position whose logits predict each target's concept token: ``prompt_length + index - 1``."""
    return torch.tensor([prompt_length + t.index - 1 for t in targets], dtype=torch.long)


def record_pairs(
    adapter: VLMAdapter,
    originals: Sequence[Image.Image] | torch.Tensor,
    inpainted: Sequence[Image.Image] | torch.Tensor,
    targets: Sequence[Target],
    config: RecordConfig = RecordConfig(),
) -> PairRecord:
    """Record ``O_o``, ``O_i`` and ``g_c`` reductions for ``B`` (original, inpainted) pairs in one forward+backward,
    on the torch threads `kneuron.engine.runtime.threads.job` gives this model (one for small models unless the user
    chose)."""
    with job(adapter.model):
        return _record_pairs(adapter, originals, inpainted, targets, config)


def _record_pairs(
    adapter: VLMAdapter,
    originals: Sequence[Image.Image] | torch.Tensor,
    inpainted: Sequence[Image.Image] | torch.Tensor,
    targets: Sequence[Target],
    config: RecordConfig,
) -> PairRecord:
    b = len(targets)
    images: Sequence[Image.Image] | torch.Tensor
    if isinstance(originals, torch.Tensor):
        images = torch.cat([adapter.pixel_values(originals), adapter.pixel_values(inpainted)])
    else:
        images = list(originals) + list(inpainted)
    tokens = [list(t.tokens) for t in targets]
    prepared = adapter.prepare(images, targets=tokens + tokens)
    rows = torch.arange(b, device=adapter.device)
    at = target_positions(prepared.prompt_length, targets).to(adapter.device)
    act_index: tuple[slice | torch.Tensor, torch.Tensor]
    grad_index: tuple[slice | torch.Tensor, torch.Tensor]
    if config.positions == "target":  # one position per row: index (row, position) pairs
        act_index = (torch.cat([rows, rows + b]).unsqueeze(1), torch.cat([at, at]).unsqueeze(1))  # -> [2B, 1, d_ff]
        grad_index = (rows.unsqueeze(1), at.unsqueeze(1))  # -> [B, 1, d_ff]
        positions = at.unsqueeze(1)
    else:
        positions = prepared.positions(config.positions).to(adapter.device)
        act_index = (slice(None), positions)
        grad_index = (slice(0, b), positions)
    token_ids = torch.tensor([t.token_id for t in targets], device=adapter.device)
    n_layers = adapter.n_layers
    model = traced(adapter)

    with torch.enable_grad(), model.trace(*prepared.args, **prepared.kwargs):
        # The weights are frozen: make the residual stream require grad so a graph exists.
        adapter.decoder_layers(model)[0].input.requires_grad_(True)
        acts = [adapter.neuron_module(model, layer).input for layer in range(n_layers)]
        logits = adapter.logits(model.output)
        y = logits[rows, at, token_ids]  # [B] pre-softmax logits y^c
        with y.sum().backward():
            # nnsight: gradients must be requested in reverse forward order
            grads = [acts[layer].grad for layer in reversed(range(n_layers))][::-1]
            grads_p = nnsight.save([g[grad_index].float() for g in grads])
        acts_p = nnsight.save([a[act_index].float() for a in acts])
        y_saved = nnsight.save(y.detach().float())
    return reduce_pairs(acts_p, grads_p, b, config.top_k, positions, y_saved, at)


def reduce_pairs(
    acts: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    b: int,
    top_k: int,
    positions: torch.Tensor,
    target_logit: torch.Tensor,
    target_position: torch.Tensor,
) -> PairRecord:
    """Reduce per-layer ``acts[l] [2B, P, d_ff]`` (originals first) and ``grads[l] [B, P, d_ff]`` on their device."""
    with torch.no_grad():
        return _reduce(acts, grads, b, top_k, positions, target_logit, target_position)


def _reduce(acts: Any, grads: Any, b: int, top_k: int, positions: Any, target_logit: Any,
            target_position: Any) -> PairRecord:
    o_mean, i_mean, d_max, g_max, g_mean = [], [], [], [], []
    top_units, top_o, top_i, top_g = [], [], [], []
    for act, grad in zip(acts, grads, strict=True):
        o, i = act[:b], act[b:]
        g = o * grad
        o_mean.append(o.mean(1))
        i_mean.append(i.mean(1))
        d_max.append((o - i).amax(1))
        g_max.append(g.amax(1))
        g_mean.append(g.mean(1))
        k = min(top_k, o.shape[-1])
        vals, idx = o.topk(k, dim=-1)  # [B, P, k]
        top_units.append(idx)
        top_o.append(vals)
        top_i.append(i.gather(-1, idx))
        top_g.append(g.gather(-1, idx))

    def stack(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts, dim=1).cpu()  # [B, L, ...]

    return PairRecord(
        o_mean=stack(o_mean), i_mean=stack(i_mean), d_max=stack(d_max), g_max=stack(g_max), g_mean=stack(g_mean),
        top_units=stack(top_units), top_o=stack(top_o), top_i=stack(top_i), top_g=stack(top_g),
        positions=positions.cpu(), target_logit=target_logit.detach().cpu(), target_position=target_position.cpu(),
    )
