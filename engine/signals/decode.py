"""Decode FFN neurons to vocabulary tokens: project a neuron's output weight through the unembedding.

Neuron ``(l, i)`` writes ``O^l[i] * W_down^l[:, i]`` into the residual stream, so its direct effect on the
next-token logits is ``W_U · W_down^l[:, i]`` (``[V]``), Pan et al.'s (2024) ``down_proj.weight.T @ lm_head.weight.T``.
With ``final_norm=True`` the column first goes through the model's final RMSNorm
(``x / rms(x) * weight``, the module itself, eps included), which is what the residual stream passes through
before ``lm_head``; the ranking then reflects the norm's per-dimension weights too.

``concept_hit_rate`` answers "how often does the concept word appear in its neurons' top tokens". A hit is a
top token that decodes to a surface form of the concept (`concept_words`); special, unknown and padding tokens
(`excluded_token_ids`) never count, and a surface form whose first piece is such a token is not a form.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.neurons import check_neurons, neuron_pairs

#: word-start markers of SentencePiece (``▁``) and byte-level BPE (``Ġ``) vocabularies
_WORD_MARKERS = "\u2581\u0120"



@dataclass(frozen=True)
class DecodedNeuron:
    """Top-k vocabulary projection of neuron ``(layer, unit)``.

    ``token_ids``/``tokens``/``logits``: ``[k]`` in descending logit order; ``tokens`` are the decoded
    strings (``tokenizer.decode([id])``, markers such as a leading space kept as the tokenizer writes them).
    """

    layer: int
    unit: int
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    logits: tuple[float, ...]


def neuron_logits(adapter: VLMAdapter, pairs: Sequence[tuple[int, int]], final_norm: bool = False) -> torch.Tensor:
    """``[n, V]`` float32 logits ``W_U · W_down^l[:, i]`` (or ``W_U · norm(W_down^l[:, i])``) per neuron."""
    check_neurons(adapter, pairs)
    w_u = adapter.unembedding()  # [V, d]
    columns = []
    with torch.no_grad():
        for layer, unit in pairs:
            columns.append(adapter.down_proj_weight(layer)[:, unit])  # [d]
        if not columns:
            return torch.zeros((0, w_u.shape[0]), dtype=torch.float32)
        vectors = torch.stack(columns).to(w_u.device)  # [n, d]
        if final_norm:
            norm = adapter.final_norm()
            vectors = norm(vectors.to(cast(torch.Tensor, norm.weight).dtype).unsqueeze(0)).squeeze(0)
        return (vectors.float() @ w_u.float().T).cpu()  # [n, V]


def decode_neurons(adapter: VLMAdapter, neurons: Mapping[int, Sequence[int]] | Iterable[tuple[int, int]],
                   k: int = 10, final_norm: bool = False) -> list[DecodedNeuron]:
    """The top-``k`` tokens of each neuron (sorted by (layer, unit)); ties keep the lower token id first."""
    if k < 1:
        raise KneuronError(f"k must be >= 1, got {k}")
    pairs = neuron_pairs(neurons)
    logits = neuron_logits(adapter, pairs, final_norm=final_norm)
    k = min(k, logits.shape[-1]) if logits.numel() else k
    out = []
    for row, (layer, unit) in enumerate(pairs):
        # stable descending sort: equal logits keep ascending token ids (deterministic)
        order = torch.sort(logits[row], descending=True, stable=True).indices[:k]
        ids = tuple(int(i) for i in order)
        out.append(DecodedNeuron(layer=layer, unit=unit, token_ids=ids,
                                 tokens=tuple(adapter.tokenizer.decode([i]) for i in ids),
                                 logits=tuple(float(logits[row, i]) for i in ids)))
    return out


def normalise_token(token: str) -> str:
    """A token string as a bare lower-case word: word-start markers, spaces and punctuation around it dropped."""
    text = token.strip().strip(_WORD_MARKERS).strip()
    return re.sub(r"^[^0-9a-z]+|[^0-9a-z]+$", "", text.lower())


def excluded_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that never count as a concept hit: the tokenizer's special tokens (``all_special_ids``) and its
    unknown and padding tokens."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    for name in ("unk_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    return frozenset(ids)


def neuron_hits(decoded: Sequence[DecodedNeuron], concept_words: Iterable[str],
                excluded: Iterable[int] = ()) -> list[bool]:
    """Per neuron: whether one of its top tokens is a concept word (after `normalise_token` on both sides: case,
    leading-space markers and surrounding punctuation ignored). Tokens whose id is in ``excluded`` (special,
    unknown, padding: `excluded_token_ids`) never match."""
    words = {normalise_token(w) for w in concept_words} - {""}
    if not words:
        raise KneuronError("concept_hit_rate needs at least one non-empty concept word")
    skip = frozenset(int(i) for i in excluded)
    return [any(i not in skip and normalise_token(t) in words
                for i, t in zip(neuron.token_ids, neuron.tokens, strict=True))
            for neuron in decoded]


def concept_hit_rate(decoded: Sequence[DecodedNeuron], concept_words: Iterable[str],
                     excluded: Iterable[int] = ()) -> float:
    """Share of ``decoded`` neurons with at least one top token equal to a concept word (`neuron_hits`).

    ``concept_words``: surface forms of the concept (e.g. ``["dog", "dogs"]``, or a sub-token such as ``"gir"``
    for words the tokenizer splits; see `concept_words`). ``excluded``: token ids that never count. NaN for no
    neurons.
    """
    hits = neuron_hits(decoded, concept_words, excluded)
    return sum(hits) / len(hits) if hits else float("nan")


def concept_words(adapter: VLMAdapter, concept: str) -> list[str]:
    """Surface forms that count as the concept in decoded tokens: the name and its plural(s), each word of a
    multi-word name, and the first sub-token of each when it has 3+ characters (what the model emits first when
    it writes the word). A first sub-token that is special, unknown or padding (`excluded_token_ids`: a word
    out of a word-level vocabulary becomes ``<unk>``) adds no form."""
    from kneuron.engine.eval.mentions import plurals

    name = " ".join(concept.replace("_", " ").replace("-", " ").split()).lower()
    forms = [name, *plurals(name)]
    forms += [word for form in list(forms) for word in form.split()]
    out = list(dict.fromkeys(forms))
    excluded = excluded_token_ids(adapter.tokenizer)
    for form in list(out):
        ids = adapter.concept_tokens(form)
        if ids and ids[0] not in excluded:
            first = normalise_token(adapter.tokenizer.decode([ids[0]]))
            if len(first) >= 3:  # shorter pieces ("a", "ca") match too many unrelated tokens
                out.append(first)
    return list(dict.fromkeys(out))

