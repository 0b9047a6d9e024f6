"""Pan et al. 2024 ("Finding and Editing Multi-Modal Neurons in Pre-Trained Transformers"): the gradient-free
contribution score, aggregated per concept.

For an identification image of concept ``k`` with the model's own greedy caption, let ``pos`` be the sequence
position that predicts the concept's first sub-token ``t`` (teacher-forced on the caption, or after the
answer prefix when the caption lacks ``t``; `concept_target`). The score of neuron ``(l, i)`` is

    s[l, i] = O^l[pos, i] * (W_down^l[:, i] . W_U[t])

the neuron's activation times its direct logit contribution to ``t`` (the logit-lens projection of its output
vector, no final norm, as in Pan's ``preparation.py``). Pan ranks per (image, noun); for a per-concept set
the scores are **summed over the identification images** and the top ``budget`` kept (ties: lower layer,
then lower unit). ``O^l`` is ``down_proj``'s input here (Pan hooks ``act_fn``, i.e. SiLU(gate) alone), the
activation that kneuron records and suppresses.

One traced forward (nnsight) per batch of images; the product is formed on the model's device and only
``[B, L, d_ff]`` scores leave it.
"""
from __future__ import annotations

from collections.abc import Sequence

import nnsight
import numpy as np
import torch
from PIL import Image

from kneuron.engine.baselines.base import Baseline, BaselineContext, ScoredNeuron, check_budget, register, top_neurons
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.record import Target, target_positions, traced


def direct_logit_contributions(adapter: VLMAdapter, token_ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer ``[B, d_ff]``: ``W_U[t_b] @ W_down^l`` (float32, on the model's device)."""
    device = adapter.device
    rows = adapter.unembedding().detach()[token_ids.to(device)].float()  # [B, d_model]
    return [rows @ adapter.down_proj_weight(layer).detach().float() for layer in range(adapter.n_layers)]


def pan_scores(adapter: VLMAdapter, images: Sequence[Image.Image], targets: Sequence[Target],
               batch_size: int = 8) -> torch.Tensor:
    """Contribution scores ``[B, L, d_ff]`` (float32, CPU) of each image at its target position."""
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    model = traced(adapter)
    out: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        batch_targets = list(targets[start:start + batch_size])
        prepared = adapter.prepare(list(images[start:start + batch_size]),
                                   targets=[list(t.tokens) for t in batch_targets])
        device = adapter.device
        rows = torch.arange(len(batch_targets), device=device)
        at = target_positions(prepared.prompt_length, batch_targets).to(device)
        token_ids = torch.tensor([t.token_id for t in batch_targets], dtype=torch.long)
        direct = direct_logit_contributions(adapter, token_ids)
        with torch.no_grad(), model.trace(*prepared.args, **prepared.kwargs):
            scores = nnsight.save([
                adapter.neuron_module(model, layer).input[rows, at].float() * direct[layer]
                for layer in range(adapter.n_layers)
            ])
        out.append(torch.stack([s.detach() for s in scores], dim=1).cpu())  # [b, L, d_ff]
    if not out:
        return torch.zeros(0, adapter.n_layers, adapter.d_ff)
    return torch.cat(out)


@register
class PanBaseline(Baseline):
    """Top-``budget`` neurons by the summed activation x direct-logit-contribution score."""

    name = "pan"

    def options(self) -> dict[str, object]:
        return {"aggregate": "sum", "activation": "down_proj.input"}

    def concept_scores(self, ctx: BaselineContext, concept: str) -> np.ndarray:
        """``[L, d_ff]`` summed scores over the identification images of ``concept``."""
        adapter, _ = ctx.require_model(self.name)
        _, targets = ctx.ident_targets(concept)
        scores = pan_scores(adapter, ctx.ident_pixels(concept), targets, batch_size=ctx.batch_size)
        return scores.double().sum(0).numpy()

    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        adapter, _ = ctx.require_model(self.name)
        budget = check_budget(budget, adapter.n_layers, adapter.d_ff)
        if budget == 0:
            return []
        return top_neurons(self.concept_scores(ctx, concept), budget)
