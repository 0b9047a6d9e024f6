"""Load a local Hugging Face VLM folder as an adapter: the registry of families by config ``model_type``.

| model_type | adapter | module |
|---|---|---|
| ``llava`` / ``blip-2`` / ``instructblip`` | `LlavaAdapter` / `Blip2Adapter` / `InstructBlipAdapter` | `hf_adapters` |
| ``qwen2_vl`` / ``qwen2_5_vl`` | `Qwen2VLAdapter` / `Qwen25VLAdapter` | `qwen2_vl` |
| ``llava_next`` / ``llava_onevision`` | `LlavaNextAdapter` / `LlavaOnevisionAdapter` | `llava_next` |
| ``idefics3`` / ``smolvlm`` | `Idefics3Adapter` / `SmolVLMAdapter` | `idefics3` |
| ``gemma3`` | `Gemma3Adapter` | `gemma3` |

Before any weight is read, the model is built on the meta device and its text model checked for the gated-MLP
neuron site (`HFVLMAdapter.find_site`): a GPT-2, OPT, T5 or fused-MLP text model is one `KneuronError` line.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, cast

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.ffn_site import find_ffn_site
from kneuron.engine.models.hf_adapters import ADAPTERS, QFORMER_TOKENIZER_DIR, HFVLMAdapter

#: model_type -> (module, adapter class) of the families outside `hf_adapters` (imported when needed)
FAMILY_MODULES: dict[str, tuple[str, str]] = {
    "qwen2_vl": ("kneuron.engine.models.qwen2_vl", "Qwen2VLAdapter"),
    "qwen2_5_vl": ("kneuron.engine.models.qwen2_vl", "Qwen25VLAdapter"),
    "llava_next": ("kneuron.engine.models.llava_next", "LlavaNextAdapter"),
    "llava_onevision": ("kneuron.engine.models.llava_next", "LlavaOnevisionAdapter"),
    "idefics3": ("kneuron.engine.models.idefics3", "Idefics3Adapter"),
    "smolvlm": ("kneuron.engine.models.idefics3", "SmolVLMAdapter"),
    "gemma3": ("kneuron.engine.models.gemma3", "Gemma3Adapter"),
}
SUPPORTED = tuple(ADAPTERS) + tuple(FAMILY_MODULES)


def adapter_class(model_type: str) -> type[HFVLMAdapter]:
    """The adapter class of a config ``model_type`` (`KeyError` when unsupported)."""
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    module, name = FAMILY_MODULES[model_type]
    cls: type[HFVLMAdapter] = getattr(importlib.import_module(module), name)
    return cls


def read_hf_config(folder: Path) -> dict[str, Any]:
    """``config.json`` checked for a supported ``model_type`` (else `KneuronError`)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KneuronError(f"unreadable model config {path}: {str(exc).splitlines()[0]}") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise KneuronError(f"unsupported model_type {model_type!r} in {path} (supported: {', '.join(SUPPORTED)}, "
                           "each with a gated-MLP text model)")
    if model_type in ("blip-2", "instructblip") and config.get("image_token_index") is None:
        raise KneuronError(f"{path} has no image_token_index (needed to place the image tokens in the prompt)")
    return cast("dict[str, Any]", config)


def _load_tokenizer(path: Path, what: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise KneuronError(f"cannot load the {what} from {path}: {str(exc).splitlines()[0]}") from None


def _load_image_processor(folder: Path) -> Any:
    if not (folder / "preprocessor_config.json").is_file() and not (folder / "processor_config.json").is_file():
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        raise KneuronError(f"cannot load the image processor from {folder}: {str(exc).splitlines()[0]}") from None


def check_text_model(cls: type[HFVLMAdapter], folder: Path) -> None:
    """Build the model on the meta device (no memory, no weights) and check its FFN site (`KneuronError`)."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise KneuronError(f"unreadable model config {folder / 'config.json'}: {_first_line(exc)}") from None
    try:
        with torch.device("meta"):
            skeleton = getattr(transformers, cls.hf_class)._from_config(config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        with torch.device("meta"):  # a text model the family cannot even wrap (GPT-2 in LLaVA): name its MLP
            text_model = transformers.AutoModel.from_config(config.get_text_config())
        find_ffn_site(text_model, ())
        raise KneuronError(f"cannot build {cls.family} from {folder / 'config.json'}: {_first_line(exc)}") from None
    cls.find_site(skeleton)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def load_hf_vlm(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                name: str | None = None, **adapter_options: Any) -> HFVLMAdapter:
    """Load a local Hugging Face folder of a supported family (`SUPPORTED`) as a frozen, eval-mode adapter.

    ``dtype`` None keeps the checkpoint's dtype. ``adapter_options``: ``instruction``, ``template``,
    ``max_new_tokens`` (and ``image_side`` for the families that pin the input resolution).
    """
    import transformers

    folder = Path(folder)
    config = read_hf_config(folder)
    model_type = config["model_type"]
    cls = adapter_class(model_type)
    check_text_model(cls, folder)
    tokenizer = _load_tokenizer(folder, "tokenizer")
    extra: dict[str, Any] = {}
    if model_type == "instructblip":
        qdir = folder / QFORMER_TOKENIZER_DIR
        if not qdir.is_dir():
            raise KneuronError(f"InstructBLIP folder has no {QFORMER_TOKENIZER_DIR}/ (the Q-Former tokenizer): "
                               f"{folder}")
        extra["qformer_tokenizer"] = _load_tokenizer(qdir, "Q-Former tokenizer")
    image_processor = _load_image_processor(folder)
    if image_processor is None and cls.needs_image_processor:
        raise KneuronError(f"{model_type} folder has no preprocessor_config.json (its image processor): {folder}")
    try:
        model = getattr(transformers, cls.hf_class).from_pretrained(
            folder, dtype=dtype if dtype is not None else "auto", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise KneuronError(f"cannot load {model_type} weights from {folder}: {str(exc).splitlines()[0]}") from None
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return cls(model, tokenizer, name=name or folder.name, image_processor=image_processor, **extra,
               **adapter_options)


__all__ = ["FAMILY_MODULES", "SUPPORTED", "adapter_class", "check_text_model", "load_hf_vlm", "read_hf_config"]
