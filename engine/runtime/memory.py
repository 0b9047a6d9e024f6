"""How many (concept, image) pairs fit in one recording batch: the rule behind ``kneuron ingest --batch-size auto``.

Recording one batch of ``B`` pairs runs ``2B`` rows (original and inpainted image) of ``T`` tokens through the
LLM with autograd on, then one backward of ``y^c``. What grows with ``B`` is what autograd keeps per row, token
and layer, plus the logits:

- per decoder layer, per token: the FFN's ``gate``, ``up``, ``act(gate)`` and their product (``4 * d_ff``
  values) and the attention block's inputs, projections and outputs (~``10 * d_model`` values), in the model's
  dtype (``dtype_bytes``);
- per row: the logits ``[T, vocab]`` in float32 (4 bytes);
- the recorder's own slices are small (``O'`` and ``dO'`` at P positions) and are covered by the margin.

    bytes_per_pair = 2 * T * (n_layers * (4 * d_ff + 10 * d_model) * dtype_bytes + 4 * vocab)

``auto_batch_size`` fills ``safety`` (0.6) of the free device memory after the weights are loaded, with at least
1 and at most ``cap`` (32) pairs. It is an estimate from the shapes, not a measurement: a first batch that still
runs out of memory says so, and a smaller ``--batch-size`` N is the fix. On CPU time, not memory, bounds the
batch: ``auto`` means `CPU_BATCH` pairs there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kneuron.engine.models.base import VLMAdapter

#: pairs per batch that ``auto`` chooses on a CPU
CPU_BATCH = 8
#: share of the free device memory the batch may fill
SAFETY = 0.6
#: most pairs per batch ``auto`` chooses (more gains nothing once the GPU is busy)
CAP = 32


@dataclass(frozen=True)
class RecordShape:
    """What the memory of one recording row depends on.

    n_layers / d_model / d_ff: the LLM's decoder; vocab: logits width; tokens: ``T``, prompt (image tokens
    included) plus the teacher-forced answer; dtype_bytes: bytes per activation value (2 for bf16/fp16).
    """

    n_layers: int
    d_model: int
    d_ff: int
    vocab: int
    tokens: int
    dtype_bytes: int


def bytes_per_pair(shape: RecordShape) -> int:
    """Autograd memory of one pair (two rows), in bytes (module docstring)."""
    per_token = shape.n_layers * (4 * shape.d_ff + 10 * shape.d_model) * shape.dtype_bytes + 4 * shape.vocab
    return 2 * shape.tokens * per_token


def auto_batch_size(shape: RecordShape, free_bytes: int, safety: float = SAFETY, cap: int = CAP) -> int:
    """Pairs per batch that fill ``safety`` of ``free_bytes``: at least 1, at most ``cap``."""
    fits = int(safety * max(0, free_bytes) // max(1, bytes_per_pair(shape)))
    return max(1, min(cap, fits))


def free_device_memory(device: str | torch.device) -> int | None:
    """Free bytes on a CUDA device (None for other devices)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def record_shape(adapter: VLMAdapter, answer_tokens: int = 32) -> RecordShape:
    """The `RecordShape` of an adapter's model: prompt length of one image plus ``answer_tokens``."""
    from PIL import Image

    config: Any = adapter.language_model.config
    prompt = adapter.prepare([Image.new("RGB", (32, 32))]).prompt_length
    return RecordShape(n_layers=adapter.n_layers, d_model=int(config.hidden_size), d_ff=adapter.d_ff,
                       vocab=int(config.vocab_size), tokens=int(prompt) + answer_tokens,
                       dtype_bytes=torch.empty((), dtype=adapter.dtype).element_size())


def choose_batch_size(requested: int | str, adapter: VLMAdapter, free_bytes: int | None = None
                      ) -> tuple[int, str | None]:
    """(pairs per batch, a note saying how ``auto`` chose it, or None when ``requested`` is a number).

    free_bytes: the free device memory to plan for (default: measured on the adapter's device; CPU: none).
    """
    if requested != "auto":
        return int(requested), None
    if free_bytes is None:
        free_bytes = free_device_memory(adapter.device)
    if free_bytes is None:
        return CPU_BATCH, f"batch size auto: {CPU_BATCH} pairs (on {adapter.device} time, not memory, bounds it)"
    shape = record_shape(adapter)
    chosen = auto_batch_size(shape, free_bytes)
    return chosen, (f"batch size auto: {chosen} pairs ({free_bytes / 2**30:.1f} GiB free, "
                    f"~{bytes_per_pair(shape) / 2**20:.0f} MiB per pair, {SAFETY:.0%} used)")
