"""Greedy decoding of a causal language model from ``inputs_embeds``, each row leaving the batch when it stops.

A model's ``generate`` computes every row until the longest caption stops (a finished row keeps decoding pad
tokens); here a row that produced a stop token (or ``max_new_tokens`` tokens) leaves the batch and the KV cache
at once, so a step costs what the unfinished rows cost. The tokens are the ones ``generate`` gives with
``do_sample=False, num_beams=1`` and no logits processors (`plain_greedy` says when that holds):

    tokens = decode_rows(lm, embeds, stop_ids={2}, max_new_tokens=40)  # embeds [R, P, d_model]
    tokens[r]  # row r's new tokens, its stop token included when it stopped

Callers that intervene per row (forward hooks holding one value per row) follow the batch with ``on_rows``: it
gets the indices (into the original ``R`` rows) of the rows the next forward computes, before every forward.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

#: generation-config fields that do not change what plain greedy decoding produces
NEUTRAL_FIELDS = frozenset({
    "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "max_length", "max_new_tokens", "do_sample", "num_beams", "temperature", "top_p", "top_k", "min_p",
    "typical_p", "use_cache", "cache_implementation", "_from_model_config", "output_attentions",
    "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
})


def plain_greedy(lm: nn.Module) -> bool:
    """Whether ``lm.generate(do_sample=False, num_beams=1, ...)`` is plain argmax decoding: its generation config
    sets nothing that adds a logits processor (repetition penalty, minimum length, forced or suppressed tokens,
    ...), and its forward takes ``inputs_embeds``, an attention mask and a cache."""
    config = getattr(lm, "generation_config", None)
    if config is None or not hasattr(config, "to_diff_dict"):
        return False
    if set(config.to_diff_dict()) - NEUTRAL_FIELDS:
        return False
    parameters = inspect.signature(lm.forward).parameters
    return ({"inputs_embeds", "attention_mask", "use_cache"} <= set(parameters)
            and bool({"cache", "past_key_values"} & set(parameters)))


def _cache_of(output: Any) -> Any:
    """The KV cache an output carries (``cache`` in newer transformers, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise TypeError("the language model returned no KV cache")


def decode_rows(lm: nn.Module, embeds: torch.Tensor, stop_ids: Collection[int], max_new_tokens: int,
                on_rows: Callable[[torch.Tensor], None] | None = None) -> list[list[int]]:
    """New tokens of each row of ``embeds [R, P, d_model]`` (all rows attend to all their ``P`` positions).

    A row's list ends with its first stop token, or has ``max_new_tokens`` tokens. ``on_rows(rows [R'])`` is
    called before each forward with the rows it computes (``arange(R)`` for the prompt).
    """
    parameters = inspect.signature(lm.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    n_rows, length = embeds.shape[:2]
    device = embeds.device
    stops = torch.as_tensor(sorted(stop_ids), dtype=torch.long, device=device)
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    if max_new_tokens < 1 or n_rows == 0:
        return tokens
    rows = torch.arange(n_rows, device=device)
    if on_rows is not None:
        on_rows(rows)
    with torch.no_grad():
        output = lm(inputs_embeds=embeds, attention_mask=torch.ones(n_rows, length, dtype=torch.long, device=device),
                    use_cache=True, **keep)
        cache = _cache_of(output)
        for step in range(max_new_tokens):
            chosen = output.logits[:, -1, :].float().argmax(dim=-1)  # [R']
            for row, token in zip(rows.tolist(), chosen.tolist(), strict=True):
                tokens[row].append(token)
            if step == max_new_tokens - 1:
                break
            going = ~torch.isin(chosen, stops)
            if not bool(going.all()):
                kept = torch.nonzero(going).flatten()
                if len(kept) == 0:
                    break
                cache.batch_select_indices(kept)
                rows, chosen = rows[kept], chosen[kept]
            if on_rows is not None:
                on_rows(rows)
            mask = torch.ones(len(rows), length + step + 1, dtype=torch.long, device=device)
            output = lm(input_ids=chosen[:, None], attention_mask=mask, use_cache=True, **{cache_name: cache}, **keep)
            cache = _cache_of(output)
    return tokens


__all__ = ["NEUTRAL_FIELDS", "decode_rows", "plain_greedy"]
