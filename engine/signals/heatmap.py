"""Activation heatmaps: where on the image a neuron set fires (the recipe of Pan et al. 2024, steps 1-4 below).

1. `token_activations`: how active the set's units are at each image token ``[B, n_image_tokens]``: the mean
   of ``|O^l[..., i]|`` over the units (``value="magnitude"``, the default) or of ``O^l[..., i]`` itself
   (``value="signed"``, Pan's recipe). One plain forward; positions from ``adapter.prepare``.
2. `token_to_patch_map` ``[B, n_image_tokens, n_patches]``: how much of each image token comes from each ViT
   patch (or grid cell, see *Region models*). Every row sums to 1 (0 for a token that carries no image region),
   so ``heat[p] = Σ_t act[t] · map[t, p]`` spreads each token's activation over the patches it was made from.
3. `heatmap`: patch grid -> bilinear upsample to the image size -> min-max normalised to [0, 1].
4. `overlay`: jet colormap at alpha 0.5; `side_by_side`: original | inpainted panels.

Magnitude, not the signed value, by default
-------------------------------------------
Pan et al. average ``act_fn`` outputs (``SiLU(gate)``, essentially non-negative). Our neuron activation is the
whole SwiGLU product ``SiLU(gate(x)) * up(x)``, which is signed: a unit with ``O = -3`` writes ``-3 · W_down[:, i]``
into the residual stream and is as engaged as one with ``O = +3``; suppression zeroes both, and the stage-2
score ``g_c = O ⊙ ∂y/∂O`` is positive for either sign when the gradient agrees. A signed mean over units lets
units of opposite sign cancel, so the default heat is the mean magnitude; ``value="signed"`` gives Pan's
signed mean.

Token -> patch maps
-------------------
*Patch models* (MiniGPT-4 LLaMA-2: each token = ``k`` raster-consecutive ViT patches, ``k = 4``; LLaVA: one
patch per token): token ``t`` covers patches ``t·k .. t·k+k-1`` of the raster-ordered patch grid, weight
``1/k`` each. This is exactly the ``view(B, N/k, k·d)`` grouping of the model, no attribution involved.

*Region models* (Qwen2-VL, LLaVA-NeXT / OneVision, Idefics3 / SmolVLM, Gemma 3): `VLMAdapter.image_regions` gives
each image token's box and a grid (the finest token grid); `region_map` spreads a token over the cells its box
overlaps, by overlap: a base/global-image token covers several cells, a row-end newline token none (row of 0).

*Q-Former models* (MiniGPT-4 Vicuna, BLIP-2, InstructBLIP): a query token has no location of its own. We use a
**gradient attribution**: ``map[q, p] ∝ ‖∂z_q / ∂e_p‖_F``, the Frobenius norm of the Jacobian of the LLM input
embedding of query ``q`` (``z_q``, after ``llama_proj`` / ``language_projection``, ``[d_model]``) with respect to
the ViT output at patch ``p`` (``e_p``, the vectors the Q-Former cross-attends to, ``[d_vision]``), normalised
per query to sum to 1. The norm is estimated without forming the Jacobian: for probe vectors ``w``
(Rademacher, fixed seed; the exact unit basis when ``d_model <= n_probes``)
``‖J‖_F² = E_w ‖wᵀJ‖²``, and each ``wᵀJ`` is one vector-Jacobian product. The ``n_tokens · n_probes`` products
per image are computed as rows of one batch: the ViT output is replicated, every row gets its own
cotangent, and one backward through the Q-Former and the projection gives them all.

Why not cross-attention weights (the obvious alternative)? The Q-Former cross-attends in several layers (every
other of 12 in BLIP-2 / MiniGPT-4) with 12 heads each, and self-attention between the queries and the MLPs
after every layer mix what each query read, so no single attention matrix says which patches a query's
final output depends on; averaging heads and layers (or rolling attention out) is an extra ad-hoc choice, and
attention weights ignore the value vectors they weight. The Jacobian norm measures that dependence through the
whole connector, directly on what the LLM (and so the neuron) receives, with no head/layer choice, and works
for any connector without eager attention. The Frobenius norm is direction-free: a fixed readout direction
``w`` would be arbitrary, and grad x input would depend on the sign and scale of ViT features, which have a
few outlier dimensions with very large values. Attention between image tokens inside the LLM is ignored, as
in Pan et al.: a token's activation is drawn where that token came from.

Rows sum to 1, so the heat is the set's activity *attributed* to patches. In a Q-Former model most queries
read mostly the object patches, so the activity of any set, random neurons included, lands mostly on the
objects: the share of images brighter inside the mask is near 1 for every set. `object_lift` removes the map's
own concentration (the heat a set firing equally at every token would have) and is 0 for such a set; judge a
set's lift against a random set of the same size, paired on the same images (the report does;
`kneuron.engine.signals.heatmap_contrast`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import nnsight
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageConnector, ImageRegions, VLMAdapter
from kneuron.engine.signals.neurons import check_neurons, neuron_pairs
from kneuron.engine.signals.record import traced

Neurons = Mapping[int, Sequence[int]] | Iterable[tuple[int, int]]
#: what a token's heat is made of: mean |O| over the set's units, or mean O (see the module docstring)
VALUES = ("magnitude", "signed")


# ---------------------------------------------------------------------------------------------- activations
def _grouped(neurons: Neurons) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for layer, unit in neuron_pairs(neurons):
        grouped.setdefault(layer, []).append(unit)
    return grouped


def token_activations(adapter: VLMAdapter, images: Sequence[Image.Image] | torch.Tensor, neurons: Neurons,
                      batch_size: int = 16, value: str = "magnitude") -> torch.Tensor:
    """Mean activation of the set's units at each image token: ``[B, n_image_tokens]`` float32 on CPU.

    ``neurons``: ``{layer: units}`` or ``[(layer, unit), ...]`` (at least one). ``value``: ``"magnitude"``
    (mean ``|O|``) or ``"signed"`` (mean ``O``). One forward per batch of ``batch_size`` images, read with
    nnsight at ``down_proj``'s input of the set's layers.
    """
    if value not in VALUES:
        raise KneuronError(f"unknown heat value {value!r}; use one of {', '.join(VALUES)}")
    grouped = _grouped(neurons)
    if not grouped:
        raise KneuronError("the neuron set is empty: nothing to draw a heatmap of")
    check_neurons(adapter, [(layer, unit) for layer, units in grouped.items() for unit in units])
    n_units = sum(len(units) for units in grouped.values())
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        prepared = adapter.prepare(batch)
        positions = prepared.image_positions.to(adapter.device)
        index = {layer: torch.tensor(units, device=adapter.device) for layer, units in grouped.items()}
        model = traced(adapter)
        with torch.no_grad(), model.trace(*prepared.args, **prepared.kwargs):
            picked = [adapter.neuron_module(model, layer).input[:, positions][..., index[layer]].float()
                      for layer in sorted(index)]
            sums = [(x.abs() if value == "magnitude" else x).sum(-1) for x in picked]
            saved = nnsight.save(sums)  # per layer: [b, n_image_tokens]
        out.append((torch.stack(list(saved)).sum(0) / n_units).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- token -> patch
def grouping_map(patch_grid: tuple[int, int]) -> torch.Tensor:
    """``[n_tokens, n_patches]`` map of a patch model with token grid ``(rows, cols)`` on a square patch grid of
    side ``rows``: token ``t`` covers raster-ordered patches ``t·k .. t·k+k-1`` (``k = rows // cols``), weight
    ``1/k`` each."""
    rows, cols = patch_grid
    if rows < 1 or cols < 1 or rows % cols:
        raise KneuronError(f"token grid {rows}x{cols} does not group a square patch grid of side {rows}")
    k = rows // cols
    n_tokens, n_patches = rows * cols, rows * rows
    owner = torch.arange(n_patches) // k  # [n_patches] token of each patch
    out = torch.zeros(n_tokens, n_patches)
    out[owner, torch.arange(n_patches)] = 1.0 / k
    return out


def region_map(regions: ImageRegions) -> torch.Tensor:
    """``[n_tokens, rows * cols]`` float32: the share of each token's box (`ImageRegions.boxes`) that falls in
    each cell of the raster-ordered ``regions.grid`` (overlaps under 1e-4 of a cell, float32 rounding of the box
    edges, are dropped); rows of boxes sum to 1, NaN boxes give 0."""
    rows, cols = regions.grid
    valid = ~regions.boxes.isnan().any(-1)
    b = torch.nan_to_num(regions.boxes.to(torch.float64), nan=0.0)
    ys = (torch.arange(rows + 1, dtype=torch.float64) / rows).float().double()  # edges rounded like the boxes
    xs = (torch.arange(cols + 1, dtype=torch.float64) / cols).float().double()
    over_y = (torch.minimum(b[:, 2:3], ys[None, 1:]) - torch.maximum(b[:, 0:1], ys[None, :-1])).clamp_min(0)
    over_x = (torch.minimum(b[:, 3:4], xs[None, 1:]) - torch.maximum(b[:, 1:2], xs[None, :-1])).clamp_min(0)
    overlap = (over_y[:, :, None] * over_x[:, None, :]).reshape(len(b), rows * cols)  # [T, R]
    overlap = torch.where(overlap * rows * cols < 1e-4, torch.zeros_like(overlap), overlap)
    total = overlap.sum(-1, keepdim=True)
    return torch.where(valid[:, None] & (total > 0), overlap / total.clamp_min(1e-30), torch.zeros_like(overlap)
                       ).float()


def _probes(d_out: int, n_probes: int, seed: int) -> tuple[torch.Tensor, float]:
    """Probe vectors ``[R, d_out]`` and the factor turning ``Σ_r ‖w_rᵀJ‖²`` into ``‖J‖_F²``."""
    if d_out <= n_probes:
        return torch.eye(d_out), 1.0
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n_probes, d_out), generator=gen).float() * 2 - 1
    return signs, 1.0 / n_probes


def jacobian_patch_map(tokens_of: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
                       n_probes: int = 16, seed: int = 0, max_rows: int = 256, first_patch: int = 1) -> torch.Tensor:
    """``[B, T, N]`` row-normalised ``‖∂z_q/∂e_p‖_F`` (see the module docstring).

    tokens_of: maps feature rows ``[k, N_in, d_in]`` to tokens ``[k, T, d_out]``, row by row (no mixing across
        rows). features: ``[B, N_in, d_in]``; patches are ``features[:, first_patch:]`` (``N = N_in -
        first_patch``; 1 skips the CLS token). Rows are processed ``max_rows`` at a time.
    """
    features = features.detach()
    b = features.shape[0]
    with torch.no_grad():
        probe_shape = tokens_of(features[:1])
    n_tokens, d_out = probe_shape.shape[1], probe_shape.shape[2]
    probes, scale = _probes(d_out, n_probes, seed)
    n_r = probes.shape[0]
    # every row is one (image, query, probe) triple
    image_idx = torch.arange(b).repeat_interleave(n_tokens * n_r)
    query_idx = torch.arange(n_tokens).repeat_interleave(n_r).repeat(b)
    probe_idx = torch.arange(n_r).repeat(b * n_tokens)
    n_patches = features.shape[1] - first_patch
    squares = torch.zeros(b, n_tokens, n_patches, dtype=torch.float32)
    for start in range(0, len(image_idx), max_rows):
        rows = slice(start, start + max_rows)
        imgs, queries, which = image_idx[rows], query_idx[rows], probe_idx[rows]
        k = len(imgs)
        x = features[imgs.to(features.device)].clone().requires_grad_(True)  # [k, N_in, d_in]
        with torch.enable_grad():
            tokens = tokens_of(x)  # [k, T, d_out]
            cotangent = torch.zeros_like(tokens)
            cotangent[torch.arange(k), queries.to(tokens.device)] = probes[which].to(tokens)
            (grad,) = torch.autograd.grad(tokens, x, grad_outputs=cotangent)
        sq = grad[:, first_patch:].float().pow(2).sum(-1).cpu()  # [k, N]
        squares.index_put_((imgs, queries), sq, accumulate=True)
    norms = (squares * scale).sqrt()
    totals = norms.sum(-1, keepdim=True)
    uniform = torch.full_like(norms, 1.0 / n_patches)
    return torch.where(totals > 0, norms / totals.clamp_min(1e-30), uniform)


def qformer_patch_map(adapter: VLMAdapter, images: Sequence[Image.Image] | torch.Tensor, n_probes: int = 16,
                      seed: int = 0, max_rows: int = 256) -> torch.Tensor:
    """`jacobian_patch_map` of a Q-Former adapter's images: ``[B, n_query_tokens, n_patches]``."""
    connector = adapter.image_connector()
    pixels = adapter.pixel_values(images).to(adapter.device)
    captured: dict[str, torch.Tensor] = {}

    def capture(module: Any, args: Any, output: Any) -> None:
        captured["features"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = connector.vision.register_forward_hook(capture)
    try:
        with torch.no_grad():
            connector.tokens(pixels.to(_vision_dtype(connector)), pixels.shape[0])
    finally:
        handle.remove()
    features = captured["features"]
    one_image = pixels[:1].to(_vision_dtype(connector))

    def tokens_of(rows: torch.Tensor) -> torch.Tensor:
        def replace(module: Any, args: Any, output: Any) -> Any:
            if hasattr(output, "last_hidden_state"):
                output.last_hidden_state = rows
                return output
            return (rows,) + tuple(output[1:])

        hook = connector.vision.register_forward_hook(replace)
        try:
            return connector.tokens(one_image, rows.shape[0])
        finally:
            hook.remove()

    return jacobian_patch_map(tokens_of, features, n_probes=n_probes, seed=seed, max_rows=max_rows)


def _vision_dtype(connector: ImageConnector) -> torch.dtype:
    return next(connector.vision.parameters()).dtype


def token_to_patch_map(adapter: VLMAdapter, images: Sequence[Image.Image] | torch.Tensor, n_probes: int = 16,
                       seed: int = 0) -> torch.Tensor:
    """``[B, n_image_tokens, n_patches]`` float32, rows summing to 1 (0 for region-less tokens): the box overlaps
    of a region model (`region_map` of `VLMAdapter.image_regions`), the grouping of a patch model
    (`grouping_map`) or the Jacobian attribution of a Q-Former model (`qformer_patch_map`)."""
    grid = adapter.patch_grid
    b = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    regions = adapter.image_regions()
    if regions is not None:
        mapping = region_map(regions)
        mismatch = f"image regions of {adapter.name!r} give {mapping.shape[0]} tokens but the model has"
    elif grid is not None:
        mapping = grouping_map(grid)
        mismatch = f"token grid {grid} has {mapping.shape[0]} tokens but {adapter.name!r} has"
    else:
        return qformer_patch_map(adapter, images, n_probes=n_probes, seed=seed)
    if mapping.shape[0] != adapter.n_image_tokens:
        raise KneuronError(f"{mismatch} {adapter.n_image_tokens} image tokens")
    return mapping.unsqueeze(0).expand(b, -1, -1).contiguous()


# ---------------------------------------------------------------------------------------------- heatmaps
def patch_heat(adapter: VLMAdapter, images: Sequence[Image.Image], neurons: Neurons,
               n_probes: int = 16, seed: int = 0, mapping: torch.Tensor | None = None, value: str = "magnitude"
               ) -> torch.Tensor:
    """Raw (unnormalised) heat on the patch grid: ``[B, rows, cols]`` float32 (square unless the adapter's
    `image_regions` grid is not), ``heat[p] = Σ_t act[t] · map[t, p]``. ``mapping``: a precomputed
    `token_to_patch_map` of ``images``."""
    acts = token_activations(adapter, images, neurons, value=value)  # [B, T]
    if mapping is None:
        mapping = token_to_patch_map(adapter, images, n_probes=n_probes, seed=seed)  # [B, T, N]
    heat = torch.einsum("bt,btn->bn", acts, mapping)
    regions = adapter.image_regions()
    if regions is not None:
        rows, cols = regions.grid
    else:
        rows = cols = int(round(heat.shape[-1] ** 0.5))
    if rows * cols != heat.shape[-1]:
        raise KneuronError(f"{heat.shape[-1]} patches do not form a square grid")
    return heat.view(-1, rows, cols)


def upsample(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsample of ``[rows, cols]`` to ``size = (H, W)`` -> float32 ``[H, W]`` (not normalised)."""
    up = F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def minmax(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Min-max normalise to [0, 1] (over ``values`` unless ``low``/``high`` given); a constant map -> zeros."""
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if not high > low:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def heatmaps(adapter: VLMAdapter, images: Sequence[Image.Image], neurons: Neurons, joint: bool = False,
             n_probes: int = 16, seed: int = 0, mapping: torch.Tensor | None = None, value: str = "magnitude"
             ) -> list[np.ndarray]:
    """One heatmap per image, float32 ``[H, W]`` in [0, 1] at the image's own size (Pan's recipe).

    ``joint=True`` min-max normalises all images on one common scale (an original and its inpainted copy then
    show how much the activation drops), otherwise each image on its own. ``mapping``: a precomputed
    `token_to_patch_map` of ``images`` (it does not depend on the neurons).
    """
    grids = patch_heat(adapter, images, neurons, n_probes=n_probes, seed=seed, mapping=mapping, value=value)
    raw = [upsample(grid, (image.height, image.width)) for grid, image in zip(grids, images, strict=True)]
    if not joint:
        return [minmax(r) for r in raw]
    low, high = min(float(r.min()) for r in raw), max(float(r.max()) for r in raw)
    return [minmax(r, low, high) for r in raw]


def heatmap(adapter: VLMAdapter, image: Image.Image, neurons: Neurons, n_probes: int = 16, seed: int = 0,
            value: str = "magnitude") -> np.ndarray:
    """The heatmap of one image: float32 ``[H, W]`` in [0, 1] (H, W = the image's size)."""
    return heatmaps(adapter, [image], neurons, n_probes=n_probes, seed=seed, value=value)[0]


# ---------------------------------------------------------------------------------------------- pictures
def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """``(1 - alpha) · image + alpha · cmap(heat)`` as an RGB image of the image's size (heat resized if needed)."""
    from matplotlib import colormaps

    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (image.height, image.width):
        heat = upsample(torch.from_numpy(heat), (image.height, image.width))
    colours = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3]  # [H, W, 3] in [0, 1]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    mixed = (1.0 - alpha) * base + alpha * colours
    return Image.fromarray(np.clip(np.rint(mixed * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def side_by_side(original: Image.Image, inpainted: Image.Image, *more: Image.Image,
                 labels: Sequence[str] = ("original", "inpainted"), min_side: int = 256, gap: int = 8,
                 background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Panels left to right (original, inpainted, then ``more``), each scaled up to at least ``min_side`` px
    high, with its label above it."""
    panels = [original, inpainted, *more]
    scale = max(1.0, min_side / max(p.height for p in panels))
    scaled = [p.convert("RGB").resize((round(p.width * scale), round(p.height * scale)), Image.Resampling.BICUBIC)
              for p in panels]
    label_h = 18 if labels else 0
    width = sum(p.width for p in scaled) + gap * (len(scaled) + 1)
    height = max(p.height for p in scaled) + label_h + 2 * gap
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for index, panel in enumerate(scaled):
        if index < len(labels):
            draw.text((x, gap // 2), labels[index], fill=(0, 0, 0))
        canvas.paste(panel, (x, gap + label_h))
        x += panel.width + gap
    return canvas


def heatmap_figure(adapter: VLMAdapter, original: Image.Image, inpainted: Image.Image, neurons: Neurons,
                   n_probes: int = 16, seed: int = 0, value: str = "magnitude") -> Image.Image:
    """Original and inpainted images side by side, each overlaid with its heatmap on one joint scale, and the
    colour bar of that scale on the right (`kneuron.engine.reporting.plots.with_colour_bar`)."""
    heat_o, heat_i = heatmaps(adapter, [original, inpainted], neurons, joint=True, n_probes=n_probes, seed=seed,
                              value=value)
    from kneuron.engine.reporting.plots import with_colour_bar

    return with_colour_bar(side_by_side(overlay(original, heat_o), overlay(inpainted, heat_i),
                                        labels=("original", "inpainted (same scale)")))
