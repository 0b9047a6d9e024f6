"""The optimiser of every bundled model's training: AdamW with one set of moments, cosine-decayed rate, and the
update step (`clipped_step`: fresh gradients, clipped norm)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

#: AdamW moment decay (beta1, beta2) of all kneuron training
BETAS = (0.9, 0.98)


def adamw(params: Iterable[Any], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or parameter-group dicts) with kneuron's moments."""
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, weight_decay=weight_decay)


def cosine_lr(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``lr`` to ``min_lr`` at ``total`` (held there)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def clipped_step(optim: torch.optim.Optimizer, loss: torch.Tensor, params: Iterable[torch.Tensor],
                 max_norm: float) -> None:
    """One update: the gradients of ``loss`` (earlier ones dropped), their norm over ``params`` clipped to
    ``max_norm``, then ``optim.step()``."""
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optim.step()
