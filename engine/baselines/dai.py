"""Dai et al. 2022 ("Knowledge Neurons in Pretrained Transformers"): integrated-gradients attribution with the
adaptive threshold and the sharing-ratio refinement, the prompts of a fact read as the images of a concept.

Attribution of neuron ``(l, i)`` on one image, at the position ``pos`` that predicts the concept's first
sub-token ``t`` (`concept_target`), with ``w = O^l[pos]`` the unmodified activation vector of layer ``l``:

    Attr(l, i) = w_i * (1/m) * sum_{k=0}^{m-1} dP(t | O^l[pos] = (k/m) * w) / dO^l[pos, i]

(left Riemann sum over k = 0..m-1 as the official code; baseline 0; the gradient of the **probability** of
``t``; only layer ``l`` at ``pos`` is scaled, all other activations are the model's own).

How it runs (`ig_attributions`). Scaling ``O^l[pos]`` changes nothing at positions before ``pos`` (causal
attention) and only ``pos``'s own logits are read, so the ``L * m`` scaled copies of one image differ only in
the computation of the one token at ``pos`` from layer ``l`` up. When the adapter's language model is an HF
causal LM called with ``inputs_embeds`` only (the adapter hands them out, `VLMAdapter.language_model_inputs`:
MiniGPT-4, BLIP-2, InstructBLIP), kneuron runs the sequence before ``pos`` once with the KV cache on, then all
``L * m`` (layer, step) rows of that image as one batch of single-token steps over the shared cache, forward
and backward at ``pos`` only (in chunks of ``max_rows`` rows): per image about one forward of
the image plus ``L * m`` one-token steps instead of ``L`` full forward+backward passes of ``m`` rows
(``benchmarks/test_bench_dai.py`` measures the cost against one forward+backward of the image). Other adapters
run full sequences, still every (layer, step) row of an image in one batch where the rows fit.

Refinement per concept (`refine`):
1. per image keep neurons with ``Attr > threshold_ratio * max Attr`` of that image (adaptive threshold, 0.2);
2. keep neurons kept in at least a share ``p`` of the images (``p = 0.7``), lowering ``p`` by 0.05 while fewer
   than ``budget`` neurons survive (the official code adjusts ``p`` in 0.05 steps to reach a target count);
3. rank the survivors by mean attribution over the images, cut to ``budget``; if even the smallest ``p``
   leaves fewer, fill with the other neurons by mean attribution. Exactly ``budget`` neurons result.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from kneuron.engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, check_budget, register, top_neurons
from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.runtime.threads import job
from kneuron.engine.signals.record import Target, target_positions

#: single-token rows per batch in the cached path (small batches keep the rows' KV copies in cache: 64 rows ran
#: faster than 256 on the 30-layer benchmark); full-sequence rows are limited to about 8192 tokens a batch
MAX_ROWS = 64
_FULL_ROW_TOKENS = 8192


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
    captures = {layer: _Capture(rows, at) for layer in range(adapter.n_layers)}
    with adapter.neuron_hooks(captures), torch.no_grad():
        adapter.model(*prepared.args, **prepared.kwargs)
    return torch.stack([captures[layer].value for layer in range(adapter.n_layers)], dim=1)  # type: ignore[misc]


def _row_plan(n_layers: int, steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``r`` of one image's ``L * m`` rows: (layer it scales, alpha); layer-major, alpha = 0, 1/m, ...."""
    layers = torch.arange(n_layers, device=device).repeat_interleave(steps)
    alphas = (torch.arange(steps, dtype=torch.float32, device=device) / steps).repeat(n_layers)
    return layers, alphas


def _probability_grads(adapter: VLMAdapter, run: Any, base: torch.Tensor, layer_of: torch.Tensor,
                       alpha: torch.Tensor, at: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """``d P(token | row) / d O^{layer_of[r]}[at[r]]`` per row ``[R, d_ff]``, the activation of that layer at
    ``at[r]`` set to ``alpha[r] * base[r]``; ``run()`` is the forward of the ``R`` rows (logits ``[R, T, V]``)."""
    with torch.enable_grad():  # also when the caller runs under no_grad: the hooks index `scaled` in the graph
        scaled = (alpha[:, None] * base).requires_grad_(True)
        hooks = {}
        for layer in torch.unique(layer_of).tolist():
            rows = torch.nonzero(layer_of == layer).flatten()
            hooks[int(layer)] = _ReplaceAt(rows, at[rows], scaled[rows])
        with adapter.neuron_hooks(hooks):
            logits = run()
            rows = torch.arange(len(at), device=at.device)
            prob = torch.softmax(logits[rows, at].float(), dim=-1)[rows, token]
            (grad,) = torch.autograd.grad(prob.sum(), scaled)
    return grad


def _ig_cached(adapter: VLMAdapter, embeds: torch.Tensor, at: int, token: int, steps: int,
               max_rows: int) -> torch.Tensor | None:
    """IG ``[L, d_ff]`` of one image from its language-model inputs ``embeds [1, T, d]``: the prefix before ``at``
    once with the KV cache, then every (layer, step) row as one-token steps at ``at`` (see the module docstring).
    None when the language model does not take a cache this way."""
    lm = adapter.language_model
    device = embeds.device
    parameters = inspect.signature(lm.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"  # transformers >= 5.x: "cache"
    keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    ones = torch.ones(1, at, dtype=torch.long, device=device)
    with torch.no_grad():
        prefix = lm(inputs_embeds=embeds[:, :at], attention_mask=ones, use_cache=True, **keep)
    if not hasattr(prefix, "get"):  # a tuple output: no named cache to reuse
        return None
    cache = next((prefix.get(name) for name in ("cache", "past_key_values") if prefix.get(name) is not None), None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    step = embeds[:, at:at + 1]

    def run_rows(n: int) -> Any:
        rows_cache = _repeated(cache, n)
        mask = torch.ones(n, at + 1, dtype=torch.long, device=device)
        return lm(inputs_embeds=step.expand(n, -1, -1), attention_mask=mask, use_cache=True,
                  **{cache_name: rows_cache}).logits

    captures = {layer: _Capture(torch.zeros(1, dtype=torch.long, device=device),
                                torch.zeros(1, dtype=torch.long, device=device)) for layer in range(adapter.n_layers)}
    with adapter.neuron_hooks(captures), torch.no_grad():
        run_rows(1)
    base = torch.cat([captures[layer].value for layer in range(adapter.n_layers)])  # type: ignore[misc]  # [L, d_ff]
    layer_of, alpha = _row_plan(adapter.n_layers, steps, device)
    grads = torch.empty(len(layer_of), adapter.d_ff, device=device)
    for start in range(0, len(layer_of), max_rows):
        chunk = slice(start, start + max_rows)
        n = len(layer_of[chunk])
        zero = torch.zeros(n, dtype=torch.long, device=device)
        tokens = torch.full((n,), token, dtype=torch.long, device=device)
        grads[chunk] = _probability_grads(adapter, lambda n=n: run_rows(n), base[layer_of[chunk]], layer_of[chunk],
                                          alpha[chunk], zero, tokens)
    return base * grads.view(adapter.n_layers, steps, -1).mean(dim=1)


def _repeated(cache: Any, n: int) -> Any:
    """A copy of a batch-1 KV cache for ``n`` rows: the layers' keys and values as zero-copy ``expand`` views
    where the cache keeps them as ``layers[i].keys / .values`` (the attention's own concatenation of the new
    token then makes each layer's one copy), else ``batch_repeat_interleave`` (copies)."""
    rows = copy.deepcopy(cache)
    layers = getattr(rows, "layers", None)
    if isinstance(layers, list) and layers and all(isinstance(getattr(layer, "keys", None), torch.Tensor)
                                                   and isinstance(getattr(layer, "values", None), torch.Tensor)
                                                   for layer in layers):
        for layer in layers:
            layer.keys = layer.keys.expand(n, *layer.keys.shape[1:])
            layer.values = layer.values.expand(n, *layer.values.shape[1:])
        return rows
    rows.batch_repeat_interleave(n)
    return rows


def _ig_full(adapter: VLMAdapter, images: Sequence[Image.Image], targets: Sequence[Target], steps: int,
             max_rows: int) -> torch.Tensor:
    """IG ``[n, L, d_ff]`` with full-sequence rows: every (image, layer, step) row scales its layer at its image's
    target position; rows in batches of at most ``max_rows`` rows and about 8192 tokens."""
    device = adapter.device
    tokens = [list(t.tokens) for t in targets]
    prepared = adapter.prepare(list(images), targets=tokens)
    at = target_positions(prepared.prompt_length, targets).to(device)
    n = len(targets)
    base = _activations_at(adapter, prepared, torch.arange(n, device=device), at)  # [n, L, d_ff]
    layer_of, alpha = _row_plan(adapter.n_layers, steps, device)
    length = prepared.prompt_length + max(len(t) for t in tokens)
    per_pass = max(1, min(max_rows, _FULL_ROW_TOKENS // max(1, length)))
    image_of = torch.arange(n, device=device).repeat_interleave(len(layer_of))
    row_of = torch.arange(len(layer_of), device=device).repeat(n)
    grads = torch.empty(len(image_of), adapter.d_ff, device=device)
    for start in range(0, len(image_of), per_pass):
        chunk = slice(start, start + per_pass)
        b, r = image_of[chunk], row_of[chunk]
        repeated = adapter.prepare([images[i] for i in b.tolist()], targets=[tokens[i] for i in b.tolist()])

        def run(repeated: Any = repeated) -> torch.Tensor:
            return adapter.logits(adapter.model(*repeated.args, **repeated.kwargs))

        token = torch.tensor([targets[i].token_id for i in b.tolist()], device=device)
        grads[chunk] = _probability_grads(adapter, run, base[b, layer_of[r]], layer_of[r], alpha[r], at[b], token)
    return base * grads.view(n, adapter.n_layers, steps, -1).mean(dim=2)


def ig_attributions(adapter: VLMAdapter, images: Sequence[Image.Image], targets: Sequence[Target],
                    steps: int = 20, images_per_batch: int = 1, max_rows: int = MAX_ROWS,
                    cached: bool = True) -> torch.Tensor:
    """Integrated-gradients attributions ``[B, L, d_ff]`` (float32, CPU) of each image at its target position.

    ``cached``: use the KV-cached single-token path where the adapter allows it (see the module docstring);
    False runs full sequences. ``images_per_batch``: images prepared together (their rows may share passes).
    ``max_rows``: rows per forward+backward (single-token rows; full-sequence rows count their tokens).
    """
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if steps < 1:
        raise KneuronError(f"integrated gradients need steps >= 1, got {steps}")
    if max_rows < 1:
        raise KneuronError(f"integrated gradients need max_rows >= 1, got {max_rows}")
    out: list[torch.Tensor] = []
    with job(adapter.model):
        for start in range(0, len(images), images_per_batch):
            batch_images = list(images[start:start + images_per_batch])
            batch_targets = list(targets[start:start + images_per_batch])
            done, applies = _cached_batch(adapter, batch_images, batch_targets, steps, max_rows) if cached \
                else (None, False)
            cached = cached and applies  # a model the cached path does not fit is not tried again
            if done is None:
                done = _ig_full(adapter, batch_images, batch_targets, steps, max_rows)
            out.append(done.detach().cpu())
    if not out:
        return torch.zeros(0, adapter.n_layers, adapter.d_ff)
    return torch.cat(out)


def _cached_batch(adapter: VLMAdapter, images: Sequence[Image.Image], targets: Sequence[Target], steps: int,
                  max_rows: int) -> tuple[torch.Tensor | None, bool]:
    """`_ig_cached` of each image, stacked ``[n, L, d_ff]``, or None as soon as the cached path does not apply;
    and whether it can apply to this model at all (False when the adapter has no `VLMAdapter.language_model_inputs`
    or the language model takes no cache: then no later batch tries it)."""
    rows = []
    for image, target in zip(images, targets, strict=True):
        prepared = adapter.prepare([image], targets=[list(target.tokens)])
        at = int(target_positions(prepared.prompt_length, [target])[0])
        if at < 1:
            return None, True
        embeds = adapter.language_model_inputs(prepared)
        if embeds is None:
            return None, False
        one = _ig_cached(adapter, embeds, at, target.token_id, steps, max_rows)
        if one is None:
            return None, False
        rows.append(one)
    return torch.stack(rows), True


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
