"""Model adapters and the model registry: ``load_model(name_or_path)``.

Names: the bundled tiny models (``tiny-shapes-qformer``, ``tiny-shapes-patch``) or a folder: a kneuron
MiniGPT-4 folder (``kneuron_model.json``) or a Hugging Face LLaVA / BLIP-2 / InstructBLIP folder with a LLaMA
text model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import KneuronError
from engine.models.base import PreparedBatch, VLMAdapter

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED = ("tiny-shapes-qformer", "tiny-shapes-patch")
DEFAULT_MODEL = "tiny-shapes-qformer"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(name: str | None) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise KneuronError(f"unknown dtype {name!r}; use one of {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def resolve_model_path(name_or_path: str) -> Path:
    """A bundled model name or a folder path -> the folder."""
    if name_or_path in BUNDLED:
        folder = BUNDLED_DIR / name_or_path
        if not folder.is_dir():
            raise KneuronError(f"bundled model {name_or_path} is missing from the install ({folder}); "
                               f"recreate it with `kneuron train`")
        return folder
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        raise KneuronError(f"model not found: {name_or_path} (not a bundled name: {', '.join(BUNDLED)}; "
                           f"not a folder)")
    if not folder.is_dir():
        raise KneuronError(f"model path is not a folder: {folder}")
    return folder


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype: str | torch.dtype | None = None
               ) -> VLMAdapter:
    """Load any supported model as a `VLMAdapter` (frozen, eval mode)."""
    torch_dtype = resolve_dtype(dtype) if isinstance(dtype, str) or dtype is None else dtype
    folder = resolve_model_path(name_or_path)
    if (folder / "kneuron_model.json").is_file():
        from engine.models.minigpt4_adapter import load_minigpt4

        return load_minigpt4(folder, device=device, dtype=torch_dtype, name=name_or_path)
    if (folder / "config.json").is_file():
        from engine.models.hf_adapters import load_hf_vlm

        return load_hf_vlm(folder, device=device, dtype=torch_dtype, name=name_or_path)
    raise KneuronError(f"not a model folder (no kneuron_model.json or config.json): {folder}")


__all__ = ["BUNDLED", "DEFAULT_MODEL", "PreparedBatch", "VLMAdapter", "load_model", "resolve_dtype"]
