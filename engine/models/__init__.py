"""Model adapters and the model registry: ``load_model(name_or_path)``.

Names: the bundled tiny models (``tiny-shapes-qformer``, ``tiny-shapes-patch``), a Hugging Face Hub id
``org/name[@revision]`` (its snapshot in the Hub cache: `kneuron.engine.models.hub`) or a folder: a kneuron MiniGPT-4
folder (``kneuron_model.json``) or a Hugging Face folder of a supported family (`kneuron.engine.models.families`: LLaVA,
BLIP-2,
InstructBLIP, Qwen2-VL / Qwen2.5-VL, LLaVA-NeXT / OneVision, Idefics3 / SmolVLM, Gemma 3; `hf_loader.SUPPORTED`)
whose text model has a gated MLP.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageConnector, PreparedBatch, VLMAdapter
from kneuron.engine.models.devices import resolve_device
from kneuron.engine.models.families import BUNDLED, BUNDLED_TESTBEDS

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"  # the real folder, however the package was reached
DEFAULT_MODEL = "tiny-shapes-qformer"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """A ``--dtype`` name -> ``torch.dtype``; None or ``"auto"`` -> None (keep the checkpoint's dtype)."""
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise KneuronError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def resolve_model_path(name_or_path: str) -> Path:
    """A bundled model name, a folder path or a Hub id ``org/name[@revision]`` -> the folder.

    A folder that exists wins over a Hub id of the same spelling; a Hub id is looked up in the Hub cache and
    downloaded when missing unless ``HF_HUB_OFFLINE`` is set (`kneuron.engine.models.hub.hub_snapshot`).
    """
    if name_or_path in BUNDLED + BUNDLED_TESTBEDS:
        folder = BUNDLED_DIR / name_or_path
        if not folder.is_dir():
            raise KneuronError(f"bundled model {name_or_path} is missing from the install ({folder}); "
                               f"recreate it with `kneuron train`")
        return folder
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        from kneuron.engine.models.hub import hub_snapshot, parse_hub_id

        hub = parse_hub_id(name_or_path)
        if hub is not None:
            return hub_snapshot(hub, what="model")
        names = ", ".join(BUNDLED + BUNDLED_TESTBEDS)
        raise KneuronError(f"model not found: {name_or_path} (not a bundled name: {names}; not a folder; not a "
                           f"Hugging Face Hub id org/name[@revision])")
    if not folder.is_dir():
        raise KneuronError(f"model path is not a folder: {folder}")
    return folder


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "checkpoint dtype" if dtype is None else str(dtype).removeprefix("torch.")


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None, log: Callable[[str], None] | None = None) -> VLMAdapter:
    """Load any supported model as a `VLMAdapter` (frozen, eval mode).

    ``device``: checked by `resolve_device` first (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), so a device
    torch cannot use is one `KneuronError` line before any weight is read. ``dtype``: a name of `DTYPES`,
    ``"auto"``/None (the checkpoint's dtype; float32 for kneuron MiniGPT-4 folders) or a ``torch.dtype``.
    ``log``: when given, gets one line before loading (``loading model NAME from PATH (dtype, device)``) and
    one after it (``loaded model NAME in S s``).
    """
    torch_dtype = resolve_dtype(dtype) if isinstance(dtype, str) or dtype is None else dtype
    target = resolve_device(device)
    folder = resolve_model_path(name_or_path)
    loader: Callable[..., VLMAdapter]
    if (folder / "kneuron_model.json").is_file():
        from kneuron.engine.models.minigpt4_adapter import load_minigpt4

        loader = load_minigpt4
    elif (folder / "config.json").is_file():
        from kneuron.engine.models.hf_loader import load_hf_vlm

        loader = load_hf_vlm
    else:
        raise KneuronError(f"not a model folder (no kneuron_model.json or config.json): {folder}")
    if log is not None:
        log(f"loading model {name_or_path} from {folder} ({_dtype_name(torch_dtype)}, {target})")
    started = time.perf_counter()
    adapter = loader(folder, device=target, dtype=torch_dtype, name=name_or_path)
    if log is not None:
        log(f"loaded model {name_or_path} in {time.perf_counter() - started:.1f} s")
    return adapter


__all__ = ["BUNDLED", "BUNDLED_TESTBEDS", "DEFAULT_MODEL", "DTYPES", "ImageConnector", "PreparedBatch", "VLMAdapter",
           "load_model", "resolve_device", "resolve_dtype", "resolve_model_path"]
