"""Who a run is: the identity that its id hashes (model weights, prompt, dataset content, options), its
``runs`` row, and the check that a resumed run id still means the same thing.

The run id is a function of what determines the recorded values, so rerunning the same command resumes the
same run, and a changed input (retrained weights, a regenerated dataset at the same path — its instances file
changes —, another option) makes a new run id, or a one-line error when ``--run-id`` pins the old one. The
digests of the identification images are stored in the ``runs`` row (``config_json.image_digests``); a resume
refuses images whose content changed since (`check_images_unchanged`).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint import Inpainter
from kneuron.engine.models.base import HOOK_SITE, VLMAdapter
from kneuron.engine.models.fingerprint import model_fingerprint
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION
from kneuron.engine.pipelines.ingest.config import NOT_IN_RUN_CONFIG, IngestConfig
from kneuron.engine.runtime.version import kneuron_version

#: version of the run-identity scheme (part of the hash, so a change of scheme makes new run ids);
#: 2: the identity holds the digest of the instances file, not only the dataset's path
IDENTITY_VERSION = 2
#: bytes read per file by the content fingerprint (files are hashed whole up to this size, then head + size)
FINGERPRINT_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (16 hex digits), or ``"missing"``; a file larger than 64 MiB is hashed as its
    size plus its first and last `FINGERPRINT_CHUNK` bytes, which any regeneration changes in practice."""
    try:
        size = path.stat().st_size
        digest = hashlib.sha256(str(size).encode())
        with path.open("rb") as handle:
            if size <= 64 * FINGERPRINT_CHUNK:
                for block in iter(lambda: handle.read(FINGERPRINT_CHUNK), b""):
                    digest.update(block)
            else:
                digest.update(handle.read(FINGERPRINT_CHUNK))
                handle.seek(size - FINGERPRINT_CHUNK)
                digest.update(handle.read(FINGERPRINT_CHUNK))
    except OSError:
        return "missing"
    return digest.hexdigest()[:16]


def image_digests(dataset: CocoDataset, image_ids: Iterable[int]) -> dict[str, str]:
    """``{image id: file digest}`` (`file_digest`; ``missing`` for an image that cannot be read or has no file)."""
    out: dict[str, str] = {}
    for image_id in sorted({int(i) for i in image_ids}):
        try:
            out[str(image_id)] = file_digest(dataset.image_path(image_id))
        except KneuronError:
            out[str(image_id)] = "missing"
    return out


def check_images_unchanged(stored: dict[str, str], dataset: CocoDataset) -> None:
    """A resumed run must read the images it was started on: `KneuronError` naming the first image file whose
    content changed since. An image that was ``missing`` then may exist now (its pair was skipped and is
    retried); an image that has gone missing since is left to the pair's own skip."""
    now = image_digests(dataset, [int(i) for i in stored])
    for image_id, digest in sorted(stored.items(), key=lambda item: int(item[0])):
        if digest != "missing" and now[image_id] not in (digest, "missing"):
            path = dataset.image_path(int(image_id))
            raise KneuronError(f"image {path} changed since this run recorded it; ingest into a new run "
                               "(drop --run-id, or choose another one)")


def prompt_text(adapter: VLMAdapter) -> str:
    """The prompt around the image as text (template with the instruction filled in)."""
    spec = getattr(adapter, "spec", None)
    instruction = getattr(spec, "instruction", None) or getattr(adapter, "instruction", None) or DEFAULT_INSTRUCTION
    template = getattr(adapter, "template", None)
    render = getattr(template, "render", None)
    if callable(render):
        return str(render(instruction))
    if isinstance(template, str) and template:
        return template.format(instruction=instruction)
    return instruction


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def run_identity(adapter: VLMAdapter, dataset: CocoDataset, concepts: Sequence[str], config: IngestConfig,
                 inpainter: Inpainter) -> dict[str, Any]:
    """Everything that determines the recorded values of a run (its id is a hash of this)."""
    return {
        "identity_version": IDENTITY_VERSION,
        "model_hash": model_fingerprint(adapter),
        "model": {k: v for k, v in adapter.describe().items() if k != "name"},
        "prompt": prompt_text(adapter),
        "answer_prefix": adapter.answer_prefix,
        "dtype": dtype_name(adapter.dtype),
        "dataset": str(dataset.root.resolve()),
        "instances_sha256": file_digest(dataset.instances_path),
        "split": dataset.split,
        "concepts": list(concepts),
        "min_area": config.min_area,
        "images_per_concept": config.images_per_concept,
        "ident_fraction": config.ident_fraction,
        "seed": config.seed,
        "positions": config.positions,
        "top_k": config.top_k,
        "inpainter": {**inpainter.config(), "margin_px": config.margin_px},
    }


def make_run_id(model_name: str, identity: dict[str, Any]) -> str:
    """``<model slug>-<12 hex of sha256(identity)>``, e.g. ``tiny-shapes-qformer-3fa2b1c09e4d``."""
    slug = re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(model_name).name or model_name).strip("-._")[:48] or "run"
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{slug}-{digest}"


class ModelShape(Protocol):
    """What a ``runs`` row reads of a model: a loaded `VLMAdapter`, or the `ModelHead` a worker sent back."""

    @property
    def name(self) -> str: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def d_ff(self) -> int: ...


def runs_row(run_id: str, adapter: ModelShape, identity: dict[str, Any], config: IngestConfig, n_positions: int,
             extra: dict[str, Any]) -> dict[str, list[Any]]:
    run_config = {k: v for k, v in asdict(config).items() if k not in NOT_IN_RUN_CONFIG}
    config_json = json.dumps({"identity": identity, "config": run_config, **extra}, sort_keys=True, default=str)
    return {
        "run_id": [run_id],
        "created_at": [datetime.now(timezone.utc)],
        "model_name": [adapter.name],
        "model_hash": [identity["model_hash"]],
        "hook_site": [f"blocks.{{layer}}.{HOOK_SITE}"],
        "prompt": [identity["prompt"]],
        "positions": [config.positions],
        "n_positions": [n_positions],
        "n_layers": [adapter.n_layers],
        "d_ff": [adapter.d_ff],
        "dtype": [identity["dtype"]],
        "inpainter": [json.dumps(identity["inpainter"], sort_keys=True)],
        "config_json": [config_json],
        "kneuron_version": [kneuron_version()],
    }


def count_positions(adapter: VLMAdapter, positions: str) -> int:
    """|P| for this adapter (builds the inputs of one blank image; no forward)."""
    if positions == "target":
        return 1
    prepared = adapter.prepare([Image.new("RGB", (32, 32))])
    return int(prepared.positions(positions).numel())


def check_existing_run(warehouse: Any, run_id: str, identity: dict[str, Any]) -> None:
    """A run id already in the warehouse must have been made with the same identity."""
    rows = warehouse.read("runs", run_id=run_id).to_pylist()
    stored = json.loads(rows[0]["config_json"]).get("identity") if rows else None
    if stored != json.loads(json.dumps(identity, sort_keys=True, default=str)):
        changed = sorted(k for k in set(identity) | set(stored or {}) if (stored or {}).get(k) != identity.get(k))
        raise KneuronError(f"run {run_id} already exists in {warehouse.root} with a different config "
                           f"({', '.join(changed)}); choose another --run-id")
