"""Permanent edits of a neuron set (one job: a model folder with the set edited, for every folder kind): erase
(``W_down[:, i] = 0``) or scale (``W_down[:, i] *= s``) the output
columns of FFN units ``(layer, i)`` in ``mlp.down_proj`` and write the result as a new model folder.

    result = edit_model("tiny-shapes-qformer", "erased", [(1, 7), (2, 5)], scale=0.0)
    adapter = load_model("erased")          # captions = the source's captions with those units zeroed

A neuron's activation ``a_i`` reaches the residual stream only through ``W_down[:, i] * a_i``, so scaling the
column acts like scaling ``a_i`` at every position and step (the suppression hook of
`kneuron.engine.interventions.caption`); for
``scale`` 0 or a power of two the products are the same floats, so greedy captions agree token for token.

The folder written (`edit_model`) is the source copied file by file, with only the edited tensors' bytes
changed in place inside their ``.safetensors`` files (columns computed in the file's dtype). Formats:

- kneuron MiniGPT-4 folders (``kneuron_model.json``): the LLM's weights are in ``model.safetensors`` or in the
  Hugging Face LLaMA folder of the spec's ``llm_path``. An ``llm_path`` inside the folder is copied with it; one
  outside it (``kneuron convert`` without ``--copy-llm``) is copied into ``OUT/language_model`` and the spec's
  ``llm_path`` rewritten to it (the one change to ``kneuron_model.json``), so the edit is self-contained.
- Hugging Face LLaVA / BLIP-2 / InstructBLIP folders (``config.json``, one or several ``.safetensors`` shards):
  loadable by kneuron and by plain transformers (``AutoModelForImageTextToText.from_pretrained(OUT)``).

``OUT/kneuron_edit.json`` (`EDIT_FILE`) records operation, scale, neurons (``"L:U"``), the set's origin, the
source model and its fingerprint, the edited model's fingerprint and each edited tensor (file, key, units,
sha256 before and after); earlier edits of the source stay under ``previous``. `model_fingerprint` samples
at most 65536 values per tensor, so for large models it changes only when an edited unit falls on a sampled
column; the sha256s are exact.

Bad input (scale not finite, OUT not empty without ``force`` or overlapping the source, a neuron outside the
model, no neurons, weights not in safetensors, a scale that overflows the dtype) is one `KneuronError` line
before anything is written. OUT is written under a temporary name beside it and renamed at the end.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.runtime.replace_guard import check_replaceable, json_format_is
from kneuron.engine.runtime.version import kneuron_version
from kneuron.engine.signals.neurons import NeuronSet, as_neuron_set, check_neurons, neuron_pairs

Log = Callable[[str], None]

#: the record of an edit, written into the edited folder
EDIT_FILE = "kneuron_edit.json"
#: version of the record's layout
EDIT_FORMAT = 1
#: where an LLM folder outside a MiniGPT-4 folder is copied to (inside OUT)
LLM_COPY = "language_model"
#: kneuron.engine.models.minigpt4_adapter.SPEC_FILE (not imported: no model code needed)
SPEC_FILE = "kneuron_model.json"

#: safetensors dtype names -> torch dtypes the edit can scale
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                                              "BF16": torch.bfloat16}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a ``.safetensors`` file: its key, dtype name, shape and absolute byte range in the file."""

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class TensorEdit:
    """The edit of one layer's ``down_proj`` weight: where it lives, its units and its new columns.

    ``file`` is relative to the folder the tensor's file is copied into (OUT); ``columns`` ``[d_model, n_units]``
    in the file's dtype; ``sha256_before``/``sha256_after`` digest the whole tensor's bytes.
    """

    layer: int
    entry: TensorEntry
    file: str
    units: list[int]
    columns: torch.Tensor
    sha256_before: str = ""
    sha256_after: str = ""

    def describe(self) -> dict[str, Any]:
        """The tensor's part of the edit record."""
        return {"layer": self.layer, "file": self.file, "key": self.entry.key, "dtype": self.entry.dtype,
                "units": self.units, "sha256_before": self.sha256_before, "sha256_after": self.sha256_after}


@dataclass
class EditResult:
    """What `edit_model` wrote: the folder, its record (as in `EDIT_FILE`) and the tensors it changed."""

    out: Path
    record: dict[str, Any]
    tensors: list[TensorEdit] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- checks
def check_scale(scale: float | str) -> float:
    """``scale`` as a finite float (text is parsed); `KneuronError` for anything else (nan, inf, words)."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise KneuronError(f"--scale must be a finite number, got {scale!r}")
    return value


def check_out(out: str | Path, force: bool = False, sources: Sequence[Path] = (),
              protected: Sequence[Path | str] = ()) -> Path:
    """The output folder, checked: not a file, empty unless ``force``, and not overlapping any of ``sources``
    (the folders the edit reads: OUT may be neither one of them, nor inside one, nor contain one). A non-empty
    OUT is replaced only when it is an earlier edit's output (`kneuron.engine.runtime.replace_guard`), never ``/``, the
    home or
    current folder, a ``protected`` folder (the warehouse) or a parent of one."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise KneuronError(f"output path exists and is not a folder: {path}")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise KneuronError(f"output folder {path} exists and is not empty (--force replaces it)")
    target = path.resolve()
    for source in sources:
        src = source.resolve()
        if target == src or target.is_relative_to(src) or src.is_relative_to(target):
            raise KneuronError(f"output folder {path} overlaps the model folder it edits ({source})")
    if path.is_dir() and any(path.iterdir()):
        check_replaceable(path, marker=EDIT_FILE, is_ours=json_format_is(EDIT_FORMAT), protected=[*protected, *sources])
    return path


# ---------------------------------------------------------------------------------------------- in memory
def new_columns(columns: torch.Tensor, scale: float, where: str = "") -> torch.Tensor:
    """``columns * scale`` in their own dtype (exact zeros for scale 0); `KneuronError` when a finite value
    overflows the dtype."""
    if scale == 0:
        return torch.zeros_like(columns)
    out = columns * scale
    overflow = torch.isfinite(columns) & ~torch.isfinite(out)
    if bool(overflow.any()):
        raise KneuronError(f"--scale {scale:g} overflows {str(columns.dtype).removeprefix('torch.')} in {where}")
    return out


def _weights(adapter: VLMAdapter, neurons: NeuronSet | Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    pairs = neuron_pairs(neurons)
    if not pairs:
        raise KneuronError("no neurons to edit")
    check_neurons(adapter, pairs)
    return as_neuron_set(pairs)


def apply_edit(adapter: VLMAdapter, neurons: NeuronSet | Iterable[tuple[int, int]], scale: float = 0.0) -> None:
    """Edit ``adapter``'s weights in memory, for good: ``W_down^l[:, i] *= scale`` (0: erase) for every neuron,
    computed in the weights' dtype. `KneuronError` for a neuron outside the model or a non-finite scale."""
    scale = check_scale(scale)
    with torch.no_grad():
        for layer, units in _weights(adapter, neurons).items():
            weight = adapter.down_proj_weight(layer)
            index = torch.as_tensor(units, dtype=torch.long, device=weight.device)
            weight[:, index] = new_columns(weight[:, index], scale, f"layer {layer}'s down_proj")


@contextmanager
def edited(adapter: VLMAdapter, columns: Mapping[int, tuple[Sequence[int], torch.Tensor]]) -> Iterator[VLMAdapter]:
    """``adapter`` with ``W_down^l[:, units] = values`` (``columns[l] = (units, values [d_model, n]``, cast to the
    weight's dtype and device) inside the block; the original columns are put back on exit."""
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer, (units, values) in sorted(columns.items()):
                weight = adapter.down_proj_weight(layer)
                index = torch.as_tensor(list(units), dtype=torch.long, device=weight.device)
                saved.append((weight, index, weight[:, index].clone()))
                weight[:, index] = values.to(device=weight.device, dtype=weight.dtype)
        yield adapter
    finally:
        with torch.no_grad():
            for weight, index, original in reversed(saved):
                weight[:, index] = original


# ---------------------------------------------------------------------------------------------- safetensors
def read_header(path: Path) -> dict[str, TensorEntry]:
    """key -> `TensorEntry` of a ``.safetensors`` file (its JSON header; no tensor data is read)."""
    try:
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if size > os.path.getsize(path):
                raise ValueError("header length beyond the end of the file")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise KneuronError(f"unreadable safetensors file {path}: {exc}") from None
    base = 8 + size
    return {key: TensorEntry(path, key, str(info["dtype"]), tuple(int(n) for n in info["shape"]),
                             base + int(info["data_offsets"][0]), base + int(info["data_offsets"][1]))
            for key, info in header.items() if key != "__metadata__"}


def read_tensor(entry: TensorEntry, handle: Any = None) -> tuple[bytearray, torch.Tensor]:
    """(the raw bytes, a tensor view of them) of one safetensors tensor; writing the view changes the bytes."""
    if entry.dtype not in SAFETENSORS_DTYPES:
        raise KneuronError(f"cannot edit {entry.key} in {entry.file}: dtype {entry.dtype} is not one of "
                           f"{', '.join(SAFETENSORS_DTYPES)} (quantized weights are not supported)")
    if handle is None:
        with open(entry.file, "rb") as own:
            return read_tensor(entry, own)
    handle.seek(entry.start)
    raw = bytearray(handle.read(entry.end - entry.start))
    if len(raw) != entry.end - entry.start:
        raise KneuronError(f"truncated safetensors file {entry.file} (tensor {entry.key})")
    return raw, torch.frombuffer(raw, dtype=SAFETENSORS_DTYPES[entry.dtype]).view(entry.shape)


def weight_suffix(adapter: VLMAdapter, layer: int) -> str:
    """The end of the checkpoint key of layer ``layer``'s ``down_proj`` weight that every layout shares: from the
    decoder-layer list's name on (``layers.3.mlp.down_proj.weight``), read off the loaded model's parameter name
    (checkpoints prefix it differently: ``language_model.model.``, ``model.language_model.``, ``model.``)."""
    weight = adapter.down_proj_weight(layer)
    for name, param in adapter.model.named_parameters(remove_duplicate=False):
        if param is weight:
            parts = name.split(".")
            at = max((i for i, part in enumerate(parts) if part == str(layer)), default=0)
            return ".".join(parts[max(at - 1, 0):])
    return f"layers.{layer}.mlp.down_proj.weight"


def locate_weights(adapter: VLMAdapter, layers: Iterable[int], files: Sequence[Path]) -> dict[int, TensorEntry]:
    """layer -> the `TensorEntry` in ``files`` that holds the adapter's ``down_proj`` weight of that layer.

    A candidate's key ends with `weight_suffix` (``...layers.{l}.mlp.down_proj.weight``), and it has the
    weight's shape and, cast to the loaded dtype, its values; exactly one must qualify.
    """
    headers = [read_header(path) for path in files]
    return {layer: _find_weight(adapter, layer, headers, files)[0] for layer in layers}


def _find_weight(adapter: VLMAdapter, layer: int, headers: Sequence[dict[str, TensorEntry]], files: Sequence[Path]
                 ) -> tuple[TensorEntry, bytearray, torch.Tensor]:
    """(entry, raw bytes, tensor view) of the one tensor of ``headers`` (the headers of ``files``) that holds
    layer ``layer``'s ``down_proj`` weight (see `locate_weights`), read once."""
    weight = adapter.down_proj_weight(layer).detach().cpu()
    suffix = weight_suffix(adapter, layer)
    matches = []
    for entries in headers:
        for entry in entries.values():
            named = entry.key == suffix or entry.key.endswith("." + suffix)
            if named and entry.shape == tuple(weight.shape):
                raw, values = read_tensor(entry)
                if torch.equal(values.to(weight.dtype), weight):
                    matches.append((entry, raw, values))
    if len(matches) != 1:
        where = ", ".join(str(p) for p in files) or "no .safetensors files"
        what = "no tensor" if not matches else f"{len(matches)} tensors"
        raise KneuronError(f"{what} in {where} holds layer {layer}'s down_proj weight as loaded "
                           f"(kneuron edit writes models stored as .safetensors)")
    return matches[0]


# ---------------------------------------------------------------------------------------------- folders
@dataclass(frozen=True)
class _Layout:
    """Where a model folder's files come from and go: (source folder, folder inside OUT) pairs, the weight
    files to search, and a rewritten ``kneuron_model.json`` (or None: copied as is)."""

    copies: list[tuple[Path, str]]
    weight_files: list[Path]
    spec_text: str | None = None
    llm_copied_from: str | None = None

    def out_path(self, path: Path) -> str:
        """The path inside OUT that the source file ``path`` is copied to."""
        for source, inside in sorted(self.copies, key=lambda c: -len(c[0].parts)):
            if path.is_relative_to(source):
                return str(Path(inside, path.relative_to(source)).as_posix()).removeprefix("./")
        raise ValueError(path)


def _layout(folder: Path) -> _Layout:
    weights = sorted(folder.glob("*.safetensors"))
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file():
        return _Layout([(folder, ".")], weights)
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KneuronError(f"unreadable model spec {spec_path}: {exc}") from None
    llm_path = spec.get("llm_path")
    if not llm_path:
        return _Layout([(folder, ".")], weights)
    llm_dir = Path(llm_path).expanduser()
    llm_dir = llm_dir if llm_dir.is_absolute() else folder / llm_dir
    if not llm_dir.is_dir():
        raise KneuronError(f"the language model of {folder} is {llm_path!r}, not a Hugging Face folder: kneuron edit "
                           "edits .safetensors weights in folders only (not GGUF files, hub ids or shortcuts)")
    weights += sorted(llm_dir.glob("*.safetensors"))
    real = llm_dir.resolve()
    if real.is_relative_to(folder.resolve()):
        relative = real.relative_to(folder.resolve()).as_posix()
        return _Layout([(folder, ".")], weights, None if relative == llm_path else _spec_text(spec, relative))
    name = LLM_COPY
    while (folder / name).exists():
        name += "_"
    return _Layout([(folder, "."), (llm_dir, name)], weights, _spec_text(spec, name), str(real))


def _spec_text(spec: dict[str, Any], llm_path: str) -> str:
    """The spec with ``llm_path`` replaced, written as `ModelSpec.to_json` writes it."""
    return json.dumps({**spec, "llm_path": llm_path}, indent=2, sort_keys=True) + "\n"


def _copy_tree(source: Path, target: Path, skip: Callable[[Path], bool]) -> int:
    """Copy the files under ``source`` into ``target`` (contents only: links followed, no modes copied, so the
    copies are writable); returns the bytes copied."""
    total = 0
    for root, dirs, files in os.walk(source, followlinks=True):
        dirs.sort()
        here = Path(root)
        (target / here.relative_to(source)).mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            path = here / name
            if skip(path):
                continue
            shutil.copyfile(path, target / path.relative_to(source))
            total += path.stat().st_size
    return total


def read_edit_record(folder: str | Path) -> dict[str, Any] | None:
    """The `EDIT_FILE` record of a model folder (None when it was not written by an edit)."""
    path = Path(folder) / EDIT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KneuronError(f"unreadable edit record {path}: {exc}") from None
    if not isinstance(record, dict):
        raise KneuronError(f"unreadable edit record {path}: not a JSON object")
    return record


def plan_edit(adapter: VLMAdapter, folder: Path, neurons: NeuronSet | Iterable[tuple[int, int]], scale: float
              ) -> tuple[_Layout, list[TensorEdit]]:
    """Everything `edit_model` will write, computed without writing: the folder layout and, per layer, the
    tensor to change and its new columns (in the file's dtype)."""
    chosen = _weights(adapter, neurons)
    layout = _layout(folder)
    headers = [read_header(path) for path in layout.weight_files]
    # every layer located (each tensor read once: its columns copied out, its bytes hashed) before any is edited
    found = []
    for layer, units in chosen.items():
        entry, raw, values = _find_weight(adapter, layer, headers, layout.weight_files)
        found.append((layer, units, entry, values[:, torch.as_tensor(units, dtype=torch.long)],
                      hashlib.sha256(raw).hexdigest()))
    edits = []
    for layer, units, entry, old, digest in found:
        columns = new_columns(old, scale, f"layer {layer}'s down_proj ({entry.key} in {entry.file})")
        edits.append(TensorEdit(layer, entry, layout.out_path(entry.file), units, columns, digest))
    return layout, edits


def edit_model(source: str | Path, out: str | Path, neurons: NeuronSet | Iterable[tuple[int, int]],
               scale: float = 0.0, *, adapter: VLMAdapter | None = None, origin: Mapping[str, Any] | None = None,
               force: bool = False, device: str = "cpu", log: Log | None = None,
               protected: Sequence[Path | str] = ()) -> EditResult:
    """Write ``out``: the model folder ``source`` (a bundled name or a folder) with ``neurons`` erased
    (``scale`` 0) or scaled (see the module docstring for the folder formats and the record).

    adapter: the source model already loaded (else it is loaded on ``device`` in the checkpoint's dtype); its
    ``down_proj`` weights must be the folder's. origin: where the set came from (``set_id``, ``run_id``,
    ``concept``, ``method``, ...), stored in the record. force: replace a non-empty ``out``. log: progress lines.
    Raises `KneuronError` (one line, nothing written) on bad input.
    """
    from kneuron.engine.models import load_model, resolve_model_path
    from kneuron.engine.models.fingerprint import model_fingerprint

    say: Log = log if log is not None else (lambda message: None)
    scale = check_scale(scale)
    operation = "erase" if scale == 0 else "scale"
    folder = resolve_model_path(str(source))
    target = check_out(out, force, [folder], protected)
    if adapter is None:  # not logged: a bad request fails below with its one error line and nothing else
        adapter = load_model(str(source), device=device)
    layout, edits = plan_edit(adapter, folder, neurons, scale)
    check_out(out, force, [source for source, _ in layout.copies], protected)
    previous = read_edit_record(folder)
    source_fingerprint = model_fingerprint(adapter)
    with edited(adapter, {e.layer: (e.units, e.columns) for e in edits}):
        fingerprint = model_fingerprint(adapter)

    temp = target.parent / f".{target.name}.kneuron-edit-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)  # left by a killed edit of this process id
    try:
        # replaced at the top of the folder: the old edit record; the spec when its llm_path is rewritten
        replaced = {folder / EDIT_FILE} | ({folder / SPEC_FILE} if layout.spec_text is not None else set())
        total = 0
        for src, inside in layout.copies:
            say(f"copying {src} -> {target / inside}")
            total += _copy_tree(src, temp / inside, lambda path: path in replaced)
        if layout.spec_text is not None:
            (temp / SPEC_FILE).write_text(layout.spec_text, encoding="utf-8")
        for edit in edits:
            path = temp / edit.file
            with open(path, "r+b") as handle:
                raw, values = read_tensor(edit.entry, handle)
                values[:, torch.as_tensor(edit.units, dtype=torch.long)] = edit.columns
                handle.seek(edit.entry.start)
                handle.write(raw)
            edit.sha256_after = hashlib.sha256(raw).hexdigest()
        n = sum(len(e.units) for e in edits)
        record = {
            "format": EDIT_FORMAT, "operation": operation, "scale": scale,
            "neurons": [f"{e.layer}:{unit}" for e in edits for unit in e.units], "n_neurons": n,
            "set": dict(origin) if origin else None,
            "source": {"model": str(source), "path": str(folder.resolve()), "fingerprint": source_fingerprint,
                       "fingerprint_dtype": str(adapter.dtype).removeprefix("torch."),
                       "family": str(adapter.describe().get("family", "minigpt4"))},
            "fingerprint": fingerprint, "tensors": [e.describe() for e in edits],
            "llm_copied_from": layout.llm_copied_from,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kneuron_version": kneuron_version(),
            "previous": ([*previous.get("previous", []), {k: v for k, v in previous.items() if k != "previous"}]
                         if previous else []),
        }
        (temp / EDIT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            old = target.parent / f".{target.name}.kneuron-replaced-{os.getpid()}"
            target.rename(old)
            temp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            temp.rename(target)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise KneuronError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    say(f"{operation}d {n} neuron(s) in {len(edits)} layer(s)"
        + (f" (scale {scale:g})" if scale != 0 else "") + f"; copied {total / 1e6:.1f} MB into {target}")
    return EditResult(out=target, record=record, tensors=edits)


__all__ = ["EDIT_FILE", "EditResult", "TensorEdit", "TensorEntry", "apply_edit", "check_out", "check_scale",
           "edit_model", "edited", "locate_weights", "new_columns", "plan_edit", "read_edit_record",
           "read_header", "read_tensor", "weight_suffix"]
