"""The ``--device`` option: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` -> a device torch can use, or one
`KneuronError` line saying why not (before any model weight is read)."""
from __future__ import annotations

import re

import torch

from kneuron.engine.errors import KneuronError

#: what ``--device`` accepts (``cuda:N``: the N-th CUDA device, counted from 0)
ACCEPTED = ("auto", "cpu", "cuda", "cuda:N", "mps")

_FORM = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device) -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; ``cpu``; ``cuda`` / ``cuda:N`` when this torch
    has CUDA and device N exists; ``mps`` when the MPS backend is available. Anything else: `KneuronError`
    naming the ``--device`` option (and the accepted values for an unknown one)."""
    text = str(device).strip()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    form = _FORM.fullmatch(text)
    if form is None:
        raise KneuronError(f"unknown --device {text!r}; use one of {', '.join(ACCEPTED)}")
    kind, index = form.group(1), form.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise KneuronError(f"--device {text}: there is one CPU device; use --device cpu")
        return "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise KneuronError(f"--device {text}: CUDA is not available (torch {torch.__version__}, {build}); "
                               "use --device cpu or --device auto")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise KneuronError(f"--device {text}: only {count} CUDA device(s) (cuda:0..cuda:{count - 1}); "
                               "use --device cuda or --device cuda:0")
        return text
    if not _mps_available():
        raise KneuronError(f"--device {text}: the MPS backend is not available (torch {torch.__version__}); "
                           "use --device cpu or --device auto")
    if index not in (None, "0"):
        raise KneuronError(f"--device {text}: there is one MPS device; use --device mps")
    return "mps"


__all__ = ["ACCEPTED", "resolve_device"]
