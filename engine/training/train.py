"""Train a tiny MiniGPT-4 (either variant) on a COCO-format captions dataset (the embedded shapes world).

Everything is trained from scratch (the model is tiny). The objective is the official one — next-token
cross-entropy on the answer tokens only, the answer followed by the template's stop token (``###`` for
Vicuna-v0, ``</s>`` for LLaMA-2) — plus, while training only, an auxiliary dense loss on the vision encoder:
a linear head (discarded afterwards) classifies every ViT patch into the category covering most of it
(from the instance masks) or background. A ViT trained from scratch through a captioning loss alone learns
colours quickly but shapes very slowly; the dense signal makes a 2-core CPU run of ~10 minutes enough.

With ``vision_pretrain_steps`` the ViT is first pre-trained alone on that dense task (as MiniGPT-4's EVA ViT
comes pre-trained), on augmented images (random horizontal flip and RGB channel order, which keep every
shape's identity; the patch labels follow the flip), then trained on with the rest at ``vision_lr_scale``
times the learning rate (0: frozen). Trained jointly from scratch, the ViT memorises the 8000 training images
and keeps confusing circles with hexagons on new ones. Deterministic for a seed on a given machine (one RNG,
fixed thread count).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.data.world import WorldConfig
from kneuron.engine.errors import KneuronError
from kneuron.engine.models.minigpt4 import MiniGPT4, Variant
from kneuron.engine.models.minigpt4_adapter import MiniGPT4Adapter, ModelSpec, save_minigpt4
from kneuron.engine.models.preprocess import ImagePreprocessor
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION, get_template
from kneuron.engine.models.tiny import tiny_config
from kneuron.engine.models.tokenizer import build_word_tokenizer
from kneuron.engine.runtime.scoped import seeded_torch
from kneuron.engine.training.optim import adamw, clipped_step, cosine_lr

logger = logging.getLogger(__name__)

#: the world the bundled models were trained on (its train split; val/test are the embedded default's)
TRAIN_WORLD = WorldConfig()

TEMPLATE_OF_VARIANT = {"qformer": "vicuna0_train", "patch": "llama2"}


_VARIANTS: dict[str, Variant] = {"qformer": "qformer", "patch": "patch"}


def _variant(name: str) -> Variant:
    if name in _VARIANTS:
        return _VARIANTS[name]
    raise KneuronError(f"unknown MiniGPT-4 variant {name!r}; use qformer or patch")


@dataclass
class TrainConfig:
    """Hyper-parameters of a tiny model trained on a world (defaults: the bundled models)."""

    variant: str = "qformer"
    split: str = "train"
    seed: int = 0
    steps: int = 3500
    batch_size: int = 48
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_steps: int = 150
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 2
    device: str = "cpu"
    vision_width: int = 96
    vision_layers: int = 3
    qformer_width: int = 96
    num_query_tokens: int = 8
    d_model: int = 128
    d_ff: int = 256
    n_layers: int = 4
    n_heads: int = 4
    patch_size: int = 32
    instruction: str = DEFAULT_INSTRUCTION
    answer_prefix: str = "a"
    max_new_tokens: int = 32
    aux_weight: float = 1.0
    aux_min_cover: float = 0.15
    vision_pretrain_steps: int = 0
    vision_lr_scale: float = 1.0

    @classmethod
    def bundled(cls, variant: str, **overrides: object) -> TrainConfig:
        """The recipe of the bundled ``tiny-shapes-<variant>`` model, with ``overrides`` applied."""
        values: dict[str, Any] = {"variant": variant, **BUNDLED_RECIPES[variant], **overrides}  # checked by cls
        return cls(**values)


#: what the bundled models changed from the :class:`TrainConfig` defaults
BUNDLED_RECIPES: dict[str, dict[str, object]] = {
    "qformer": {},
    "patch": {"vision_pretrain_steps": 5000, "vision_lr_scale": 0.1, "steps": 4000},
}


def lr_at(step: int, cfg: TrainConfig, total_steps: int | None = None) -> float:
    """`cosine_lr` with ``cfg``'s rates and warm-up, reaching ``min_lr`` at ``total_steps`` (default ``cfg.steps``)."""
    return cosine_lr(step, cfg.steps if total_steps is None else total_steps, cfg.lr, cfg.min_lr, cfg.warmup_steps)


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, prompt_length: int
                ) -> torch.Tensor:
    """Mean cross-entropy of ``targets [B, T]`` given ``logits [B, prompt+T, V]`` (padding masked)."""
    t = targets.shape[1]
    pred = logits[:, prompt_length - 1: prompt_length - 1 + t]  # position p predicts token p+1
    mask = torch.arange(t, device=targets.device).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.nn.functional.cross_entropy(pred[mask], targets[mask])


def patch_labels(data: CocoDataset, image_ids: list[int], image_size: int, patch_size: int,
                 min_cover: float) -> torch.Tensor:
    """``[N, n_patches]`` label per ViT patch (raster order): 1 + index of the category covering most of the
    patch (at least ``min_cover`` of it), else 0 (background)."""
    names = list(data.categories.values())
    grid = image_size // patch_size
    labels = torch.zeros(len(image_ids), grid * grid, dtype=torch.long)
    for row, image_id in enumerate(image_ids):
        best = np.zeros(grid * grid)
        for name in data.concepts_in(image_id):
            mask = np.asarray(Image.fromarray(data.concept_mask(image_id, name)).resize(
                (image_size, image_size), Image.Resampling.NEAREST), dtype=np.float32)
            cover = mask.reshape(grid, patch_size, grid, patch_size).mean(axis=(1, 3)).reshape(-1)
            better = (cover > best) & (cover >= min_cover)
            labels[row, torch.from_numpy(better)] = names.index(name) + 1
            best = np.maximum(best, np.where(better, cover, best))
    return labels


def pretrain_vision(vision: torch.nn.Module, head: torch.nn.Linear, normalise: Callable[[torch.Tensor], torch.Tensor],
                    raw: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator,
                    log: Callable[[str], None]) -> None:
    """Phase 1: train ``vision`` + ``head`` alone to classify every patch, on augmented batches.

    ``raw``: uint8 ``[N, H, W, 3]`` training images; ``labels``: ``[N, n_patches]`` (see :func:`patch_labels`);
    ``normalise``: uint8 batch -> normalised pixels ``[B, 3, H, W]``.
    """
    params = list(vision.parameters()) + list(head.parameters())
    optim = adamw(params, cfg.lr, cfg.weight_decay)
    started, running = time.time(), 0.0
    for step in range(cfg.vision_pretrain_steps):
        index = torch.from_numpy(rng.integers(0, len(raw), cfg.batch_size)).to(raw.device)
        batch, targets = augment_for_aux(raw[index], labels[index], rng)
        for group in optim.param_groups:
            group["lr"] = lr_at(step, cfg, cfg.vision_pretrain_steps)
        logits = head(vision(normalise(batch)).last_hidden_state[:, 1:])  # [B, n_patches, 1 + n_categories]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        clipped_step(optim, loss, params, cfg.grad_clip)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 500 == 0 or step == cfg.vision_pretrain_steps - 1:
            log(f"vision step {step:5d}  patch loss {running:.4f}  {time.time() - started:6.1f}s")


def augment_for_aux(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-preserving augmentation of ``images [B, H, W, 3]`` (uint8) and their patch ``labels [B, g*g]``.

    Each image is flipped left-right with probability 1/2 (its ``g x g`` label grid flipped with it) and its
    RGB channels put in a random order. Every shape of the world is left-right symmetric up to a rotation
    the world already draws, so the category of each patch is unchanged.
    """
    batch, grid = images.shape[0], math.isqrt(labels.shape[1])
    flip = torch.from_numpy(rng.random(batch) < 0.5).to(images.device)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)
    grid_labels = labels.view(batch, grid, grid)
    labels = torch.where(flip.view(-1, 1, 1), grid_labels.flip(2), grid_labels).reshape(batch, -1)
    order = torch.from_numpy(np.stack([rng.permutation(3) for _ in range(batch)])).to(images.device)
    images = torch.gather(images, 3, order.view(batch, 1, 1, 3).expand_as(images))
    return images, labels


def _param_groups(model: MiniGPT4, aux_head: torch.nn.Linear, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices except embeddings; the ViT at ``vision_lr_scale`` x the rate."""
    groups = []
    for lr_scale, named in ((1.0, [(n, p) for n, p in model.named_parameters() if not n.startswith("vision_model.")]
                             + [(f"aux.{n}", p) for n, p in aux_head.named_parameters()]),
                            (cfg.vision_lr_scale, list(model.vision_model.named_parameters()))):
        named = [(n, p) for n, p in named if p.requires_grad]
        for decays in (True, False):
            params = [p for n, p in named if (p.dim() >= 2 and "embed" not in n) == decays]
            if params:
                groups.append({"params": params, "weight_decay": cfg.weight_decay if decays else 0.0,
                               "lr_scale": lr_scale})
    return groups


def train_tiny_minigpt4(world_dir: Path, out_dir: Path, cfg: TrainConfig,
                        log: Callable[[str], None] | None = None) -> MiniGPT4Adapter:
    """Train and save a tiny MiniGPT-4 on ``world_dir``'s ``cfg.split``; returns the trained adapter.

    log: where the loss lines go (default: this module's logger at INFO). Torch's global RNG is seeded with
    ``cfg.seed`` for the training only and restored afterwards.
    """
    with seeded_torch(cfg.seed):
        return _train_tiny(world_dir, out_dir, cfg, log or logger.info)


def _train_tiny(world_dir: Path, out_dir: Path, cfg: TrainConfig, log: Callable[[str], None]) -> MiniGPT4Adapter:
    variant = _variant(cfg.variant)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    data = CocoDataset(world_dir, cfg.split)
    image_ids = data.image_ids()
    captions = [data.captions(i) for i in image_ids]
    template = get_template(TEMPLATE_OF_VARIANT[cfg.variant])
    tokenizer = build_word_tokenizer([c for caps in captions for c in caps] + [template.text, cfg.instruction])
    image_size = data.load_image(image_ids[0]).size[0]
    arch = tiny_config(variant, vocab_size=len(tokenizer), image_size=image_size, patch_size=cfg.patch_size,
                       vision_width=cfg.vision_width, vision_layers=cfg.vision_layers,
                       qformer_width=cfg.qformer_width, num_query_tokens=cfg.num_query_tokens,
                       d_model=cfg.d_model, d_ff=cfg.d_ff, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    spec = ModelSpec(architecture=arch, template=template.name, instruction=cfg.instruction,
                     answer_prefix=cfg.answer_prefix, max_new_tokens=cfg.max_new_tokens,
                     extra={"trained_on": str(Path(world_dir).name), "train_config": asdict(cfg)})
    model = MiniGPT4(arch).to(cfg.device)
    adapter = MiniGPT4Adapter(model, tokenizer, spec, name=f"tiny-shapes-{cfg.variant}")
    end_id = adapter.encode(template.stop_strings[0])
    assert len(end_id) == 1, "the stop string must be one token"

    preprocess = ImagePreprocessor(image_size)
    # uint8 [N, H, W, 3] kept once; batches are normalised as `ImagePreprocessor` does (images are already
    # image_size px, so its resize is the identity)
    raw = torch.from_numpy(np.stack([np.asarray(data.load_image(i).resize((image_size, image_size)))
                                     for i in image_ids])).to(cfg.device)
    mean = torch.tensor(preprocess.mean, device=cfg.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=cfg.device).view(1, 3, 1, 1)

    def normalise(images: torch.Tensor) -> torch.Tensor:  # uint8 [B, H, W, 3] -> [B, 3, H, W]
        return (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    encoded = [[adapter.encode(c) + end_id for c in caps] for caps in captions]
    labels = patch_labels(data, image_ids, image_size, cfg.patch_size, cfg.aux_min_cover).to(cfg.device)
    aux_head = torch.nn.Linear(cfg.vision_width, len(data.categories) + 1).to(cfg.device)
    vision_out: dict[str, torch.Tensor] = {}
    hook = model.vision_model.register_forward_hook(
        lambda _m, _i, out: vision_out.__setitem__("h", out.last_hidden_state))
    before, after = (ids.to(cfg.device) for ids in adapter.prompt_segments())
    prompt_length = len(before) + adapter.n_image_tokens + len(after)

    model.train()
    started, running = time.time(), 0.0
    if cfg.vision_pretrain_steps:
        pretrain_vision(model.vision_model, aux_head, normalise, raw, labels, cfg, rng, log)
    if cfg.vision_lr_scale == 0:
        model.vision_model.requires_grad_(False)
    optim = adamw(_param_groups(model, aux_head, cfg), cfg.lr)
    for step in range(cfg.steps):
        rows = rng.integers(0, len(image_ids), cfg.batch_size)
        picks = [encoded[r][rng.integers(0, len(encoded[r]))] for r in rows]
        lengths = torch.tensor([len(p) for p in picks])
        targets = torch.full((len(picks), int(lengths.max())), adapter.pad_id, dtype=torch.long)
        for j, p in enumerate(picks):
            targets[j, : len(p)] = torch.tensor(p)
        for group in optim.param_groups:
            group["lr"] = lr_at(step, cfg) * group["lr_scale"]
        index = torch.from_numpy(rows).to(cfg.device)
        logits = model(normalise(raw[index]), before, after, targets.to(cfg.device)).logits
        loss = answer_loss(logits, targets.to(cfg.device), lengths.to(cfg.device), prompt_length)
        if cfg.aux_weight:
            patch_logits = aux_head(vision_out["h"][:, 1:])  # [B, n_patches, 1 + n_categories]
            loss = loss + cfg.aux_weight * torch.nn.functional.cross_entropy(
                patch_logits.reshape(-1, patch_logits.shape[-1]), labels[index].reshape(-1))
        clipped_step(optim, loss, [p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {running:.4f}  lr {lr_at(step, cfg):.2e}  {time.time() - started:6.1f}s")
    hook.remove()
    model.eval().cpu()
    for p in model.parameters():
        p.requires_grad_(False)
    save_minigpt4(model, tokenizer, spec, out_dir)
    (Path(out_dir) / "train_log.json").write_text(json.dumps(
        {"final_loss": round(running, 4), "seconds": round(time.time() - started, 1), "config": asdict(cfg)},
        indent=2, sort_keys=True) + "\n")
    return adapter
