"""Dai et al. 2022 ("Knowledge Neurons in Pretrained Transformers"): integrated-gradients attribution with the
adaptive threshold and the sharing-ratio refinement, the prompts of a fact read as the images of a concept.

Attribution of neuron ``(l, i)`` on one image, at the position ``pos`` that predicts the concept's first
sub-token ``t`` (`concept_target`), with ``w = O^l[pos]`` the unmodified activation vector of layer ``l``:

    Attr(l, i) = w_i * (1/m) * sum_{k=0}^{m-1} dP(t | O^l[pos] = (k/m) * w) / dO^l[pos, i]

(left Riemann sum over k = 0..m-1 as the official code; baseline 0; the gradient of the **probability** of
``t``; only layer ``l`` at ``pos`` is scaled, all other activations are the model's own). The ``m`` steps of
one layer run as one batch of ``m`` rows (``images_per_batch`` images at once: ``m * images_per_batch``
rows), so each layer costs one forward and one backward per batch.

Refinement per concept (`refine`):
1. per image keep neurons with ``Attr > threshold_ratio * max Attr`` of that image (adaptive threshold, 0.2);
2. keep neurons kept in at least a share ``p`` of the images (``p = 0.7``), lowering ``p`` by 0.05 while fewer
   than ``budget`` neurons survive (the official code adjusts ``p`` in 0.05 steps to reach a target count);
3. rank the survivors by mean attribution over the images, cut to ``budget``; if even the smallest ``p``
   leaves fewer, fill with the other neurons by mean attribution. Exactly ``budget`` neurons result.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, check_budget, register, top_neurons
from engine.errors import KneuronError
from engine.models.base import VLMAdapter
from engine.record import Target, target_positions


class _ReplaceAt:
    """Forward pre-hook on ``down_proj``: rows ``rows`` at positions ``at`` of its input become ``values``."""

    def __init__(self, rows: torch.Tensor, at: torch.Tensor, values: torch.Tensor) -> None:
        self.rows, self.at, self.values = rows, at, values

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x[self.rows, self.at] = self.values.to(x.dtype)
        return (x,) + tuple(args[1:])


class _Capture:
    """Forward pre-hook that keeps ``input[rows, at]`` (detached)."""

    def __init__(self, rows: torch.Tensor, at: torch.Tensor) -> None:
        self.rows, self.at = rows, at
        self.value: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0][self.rows, self.at].detach().float()


def _activations_at(adapter: VLMAdapter, prepared: Any, rows: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``[B, L, d_ff]`` unmodified activations at each row's target position."""
    captures = [_Capture(rows, at) for _ in range(adapter.n_layers)]
    handles = [adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(capture)
               for layer, capture in enumerate(captures)]
    try:
        with torch.no_grad():
            adapter.model(*prepared.args, **prepared.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([c.value for c in captures], dim=1)  # type: ignore[misc]


def ig_attributions(adapter: VLMAdapter, images: Sequence[Image.Image], targets: Sequence[Target],
                    steps: int = 20, images_per_batch: int = 1) -> torch.Tensor:
    """Integrated-gradients attributions ``[B, L, d_ff]`` (float32, CPU) of each image at its target position."""
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if steps < 1:
        raise KneuronError(f"integrated gradients need steps >= 1, got {steps}")
    device = adapter.device
    out: list[torch.Tensor] = []
    for start in range(0, len(images), images_per_batch):
        batch_images = list(images[start:start + images_per_batch])
        batch_targets = list(targets[start:start + images_per_batch])
        n = len(batch_targets)
        tokens = [list(t.tokens) for t in batch_targets]
        prepared = adapter.prepare(batch_images, targets=tokens)
        at = target_positions(prepared.prompt_length, batch_targets).to(device)
        base = _activations_at(adapter, prepared, torch.arange(n, device=device), at)  # [n, L, d_ff]

        # m rows per image: image b's rows are b*m .. b*m + m-1 with alpha = 0, 1/m, ..., (m-1)/m
        repeated = adapter.prepare([img for img in batch_images for _ in range(steps)],
                                   targets=[tok for tok in tokens for _ in range(steps)])
        rows = torch.arange(n * steps, device=device)
        at_rep = at.repeat_interleave(steps)
        token_rep = torch.tensor([t.token_id for t in batch_targets], device=device).repeat_interleave(steps)
        alphas = (torch.arange(steps, dtype=torch.float32, device=device) / steps).repeat(n)[:, None]
        attributions = torch.empty_like(base)
        for layer in range(adapter.n_layers):
            scaled = (alphas * base[:, layer].repeat_interleave(steps, dim=0)).requires_grad_(True)
            module = adapter.neuron_module(adapter.model, layer)
            handle = module.register_forward_pre_hook(_ReplaceAt(rows, at_rep, scaled))
            try:
                with torch.enable_grad():
                    output = adapter.model(*repeated.args, **repeated.kwargs)
                    logits = adapter.logits(output)[rows, at_rep].float()  # [n*m, V]
                    prob = torch.softmax(logits, dim=-1)[rows, token_rep]
                    (grad,) = torch.autograd.grad(prob.sum(), scaled)
            finally:
                handle.remove()
            mean_grad = grad.view(n, steps, -1).mean(dim=1)
            attributions[:, layer] = base[:, layer] * mean_grad
        out.append(attributions.detach().cpu())
    if not out:
        return torch.zeros(0, adapter.n_layers, adapter.d_ff)
    return torch.cat(out)


def refine(attributions: np.ndarray, budget: int, threshold_ratio: float = 0.2, share: float = 0.7,
           share_step: float = 0.05) -> tuple[list[ScoredNeuron], float, int]:
    """Adaptive threshold + sharing ratio over images: exactly ``budget`` neurons from ``[n, L, d_ff]``.

    Returns (neurons as ``(layer, unit, mean attribution)``, survivors first, each part by descending mean
    attribution; the share ``p`` finally applied; the number of survivors at that ``p``).
    """
    attributions = np.asarray(attributions, dtype=np.float64)
    n = attributions.shape[0]
    if n == 0:
        raise KneuronError("Dai et al. refinement needs at least one image")
    peaks = attributions.reshape(n, -1).max(axis=1)
    kept = attributions > (threshold_ratio * np.maximum(peaks, 0.0))[:, None, None]
    kept &= (peaks > 0)[:, None, None]
    count = kept.sum(axis=0)  # [L, d_ff] images in which the neuron passes
    step = int(round(share_step * 100))
    percent = int(round(share * 100))
    if step <= 0 or percent <= 0:
        raise KneuronError(f"share and share_step must be > 0, got {share} and {share_step}")
    while True:
        survivors = count * 100 >= percent * n  # count / n >= p, in integers
        if survivors.sum() >= budget or percent - step <= 0:
            break
        percent -= step
    mean = attributions.mean(axis=0)
    chosen = top_neurons(mean, budget, eligible=survivors)
    if len(chosen) < budget:
        chosen += top_neurons(mean, budget - len(chosen), eligible=~survivors)
    return chosen, percent / 100, int(survivors.sum())


@register
class DaiBaseline(Baseline):
    """Knowledge neurons by integrated gradients (Dai et al. 2022), refined across identification images."""

    name = "dai"

    def __init__(self, steps: int = 20, threshold_ratio: float = 0.2, share: float = 0.7,
                 share_step: float = 0.05, images_per_batch: int = 1) -> None:
        if steps < 1 or images_per_batch < 1:
            raise KneuronError(f"dai: steps and images_per_batch must be >= 1, got {steps} and {images_per_batch}")
        if not 0.0 < threshold_ratio < 1.0 or not 0.0 < share <= 1.0 or not 0.0 < share_step < 1.0:
            raise KneuronError(f"dai: need 0 < threshold_ratio < 1, 0 < share <= 1, 0 < share_step < 1 "
                               f"(got {threshold_ratio}, {share}, {share_step})")
        self.steps = int(steps)
        self.threshold_ratio = float(threshold_ratio)
        self.share = float(share)
        self.share_step = float(share_step)
        self.images_per_batch = int(images_per_batch)

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "threshold_ratio": self.threshold_ratio, "share": self.share,
                "share_step": self.share_step, "target": "probability"}

    def concept_attributions(self, ctx: BaselineContext, concept: str) -> np.ndarray:
        """``[n_images, L, d_ff]`` attributions over the identification images of ``concept``."""
        adapter, _ = ctx.require_model(self.name)
        _, targets = ctx.ident_targets(concept)
        return ig_attributions(adapter, ctx.ident_pixels(concept), targets, steps=self.steps,
                               images_per_batch=self.images_per_batch).double().numpy()

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        adapter, _ = ctx.require_model(self.name)
        budget = check_budget(budget, adapter.n_layers, adapter.d_ff)
        if budget == 0:
            return []
        chosen, _, _ = refine(self.concept_attributions(ctx, concept), budget, self.threshold_ratio,
                              self.share, self.share_step)
        return chosen
