"""A model's weight fingerprint: a cheap hash that changes with any retrained weight (part of a run's identity)."""
from __future__ import annotations

import hashlib

import torch

from kneuron.engine.models.base import VLMAdapter

#: values per weight tensor that the model fingerprint reads (evenly strided; all of a smaller tensor)
FINGERPRINT_SAMPLES = 1 << 16


def model_fingerprint(adapter: VLMAdapter) -> str:
    """sha256 over every weight's name, dtype, shape and up to `FINGERPRINT_SAMPLES` evenly strided values.

    Cheap for a 7B model on a GPU (a few MB leave the device) and different for any retrained weights.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(adapter.model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            stride = max(1, flat.numel() // FINGERPRINT_SAMPLES)
            sample = flat[::stride][:FINGERPRINT_SAMPLES].contiguous().cpu()
            digest.update(f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
            digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
