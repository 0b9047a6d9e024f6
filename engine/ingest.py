"""The ingest pipeline: COCO (concept, image) pairs -> inpaint -> caption -> record -> warehouse batches.

For every concept (a COCO category) the images that contain it are split deterministically into
identification and evaluation sets (`split_ident_eval`, stored in the ``splits`` table). Every identification
image (up to ``images_per_concept``) becomes one pair: the original image and the image with the union of the
concept's instance masks, dilated by ``margin_px``, inpainted away. Per batch of pairs:

1. both images are captioned greedily (`caption_images`);
2. the target ``y^c`` is the logit of the concept's first sub-token where the model predicts it in its own
   teacher-forced caption of the original image; when the caption does not contain the concept word, the
   fixed answer prefix (``adapter.answer_prefix``) is teacher-forced and ``y^c`` is read right after it
   (``samples.target_source`` says which: ``caption`` | ``prefix``). A concept word the tokenizer splits into
   several sub-tokens is looked up as the whole sub-token sequence and ``y^c`` uses its first sub-token (noted
   once per concept; the split is stored under ``concept_tokens`` in ``runs.config_json``);
3. `record_pairs` runs originals and inpainted images through the model together and reduces on device;
4. the ``samples``, ``neuron_stats`` and ``token_stats`` rows of the batch are committed as one warehouse batch
   (the first batch of a run also carries its ``runs`` row and the ``splits`` of all its concepts).

The run id is a function of what determines the recorded values (model weights fingerprint, prompt, dtype,
dataset root and split, concepts, image selection, seed, positions, top-k, inpainter), so rerunning the same
command resumes the same run: pairs with a committed ``samples`` row are skipped, the stored splits are reused.
Pairs are grouped into batches per concept in a fixed order, so a resumed run forms the same batches as an
uninterrupted one and ends with the same rows. A pair whose image is missing or unreadable or whose mask is
empty gets a ``samples`` row with ``status = 'skipped'`` and the reason; problems with the whole run (unknown
concept, a model that does not load, another writer) raise `KneuronError` before anything is written.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image

from engine.data.coco import CocoDataset, split_ident_eval
from engine.errors import KneuronError
from engine.ingest_rows import (
    SampleRow,
    neuron_stats_table,
    samples_columns,
    splits_columns,
    token_stats_table,
)
from engine.inpaint import INPAINTERS, Inpainter, get_inpainter, removal_mask
from engine.models import DEFAULT_MODEL, load_model
from engine.models.base import HOOK_SITE, VLMAdapter
from engine.models.prompts import DEFAULT_INSTRUCTION
from engine.record import PairRecord, RecordConfig, Target, record_pairs
from engine.suppress import caption_images

WORLD_ENV_VAR = "KNEURON_WORLD"
DEFAULT_WORLD_PATH = "./kneuron-world"
#: version of the run-identity scheme (part of the hash, so a change of scheme makes new run ids)
IDENTITY_VERSION = 1
#: values per weight tensor that the model fingerprint reads (evenly strided; all of a smaller tensor)
FINGERPRINT_SAMPLES = 1 << 16
#: IngestConfig fields that do not describe the run (where it is written, how it is shown)
NOT_IN_RUN_CONFIG = ("warehouse", "run_id", "progress", "save_inpainted")

Log = Callable[[str], None]


def default_world_path() -> Path:
    """``$KNEURON_WORLD`` if set, else ``./kneuron-world``."""
    return Path(os.environ.get(WORLD_ENV_VAR) or DEFAULT_WORLD_PATH).expanduser()


POSITIONS = ("image", "prompt", "target")


@dataclass
class IngestConfig:
    """Every option of an ingest run (the CLI builds one).

    coco_root: COCO-layout folder (``annotations/instances_<split>.json`` + ``<split>/``); None = the embedded
        world at `default_world_path()`, generated there if missing.
    concepts: category names; empty = every category with >= ``min_images`` images (and a word the model's
        tokenizer knows). min_area: smallest instance area (px) for an image to count as showing the concept.
    images_per_concept: identification images recorded per concept (the lowest ids of the identification
        set); None = all. ident_fraction / seed: the identification/evaluation split.
    model / device / dtype: `load_model` arguments (``device="auto"``: CUDA when available; ``dtype="auto"``:
        the checkpoint's). batch_size: pairs per model batch (= per warehouse batch).
    positions: P = ``image`` tokens, every ``prompt`` position, or the ``target`` position (the one that predicts
        the concept token, per image); top_k: units per (layer, position) in
        ``token_stats``.
    inpainter: ``telea`` | ``ns`` | ``sd``; margin_px: dilation of the mask; inpaint_radius: OpenCV radius;
        sd_model / sd_seed / sd_steps: the diffusers pipeline. save_inpainted: folder to save the inpainted
        images in (``<folder>/<concept>/<image_id>.png``), None = do not save.
    warehouse: warehouse folder (None: `$KNEURON_WAREHOUSE` or ``./kneuron-warehouse``); run_id: override the
        derived run id; progress: show a tqdm progress bar.
    """

    coco_root: str | None = None
    split: str = "test"
    concepts: tuple[str, ...] = ()
    min_images: int = 8
    min_area: float = 0.0
    images_per_concept: int | None = 24
    ident_fraction: float = 0.5
    seed: int = 0
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    positions: str = "image"
    top_k: int = 16
    inpainter: str = "telea"
    margin_px: float = 2.0
    inpaint_radius: float = 5.0
    sd_model: str | None = None
    sd_seed: int = 0
    sd_steps: int = 25
    save_inpainted: str | None = None
    warehouse: str | None = None
    run_id: str | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise `KneuronError` naming the first option with an impossible value."""
        checks = [
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (1 <= self.top_k <= 127, f"top-k must be in 1..127, got {self.top_k}"),
            (self.positions in POSITIONS, f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"),
            (self.images_per_concept is None or self.images_per_concept >= 1,
             f"images per concept must be >= 1 (or all), got {self.images_per_concept}"),
            (self.min_images >= 1, f"min images must be >= 1, got {self.min_images}"),
            (self.min_area >= 0, f"min area must be >= 0, got {self.min_area}"),
            (0.0 < self.ident_fraction <= 1.0, f"ident fraction must be in (0, 1], got {self.ident_fraction}"),
            (self.margin_px >= 0, f"inpainting margin must be >= 0 px, got {self.margin_px}"),
            (self.inpainter in INPAINTERS, f"unknown inpainter {self.inpainter!r}; known: {', '.join(INPAINTERS)}"),
            (self.inpainter != "sd" or bool(self.sd_model),
             "the sd inpainter needs --sd-model (a local diffusers inpainting folder or hub id)"),
        ]
        for ok, message in checks:
            if not ok:
                raise KneuronError(message)


@dataclass
class IngestSummary:
    """What one `run_ingest` call did."""

    run_id: str
    warehouse: str
    concepts: list[str]
    pairs_total: int
    recorded: int = 0
    skipped: int = 0
    already_done: int = 0
    batches: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    resumed: bool = False
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One-line summary for the terminal."""
        resumed = f", {self.already_done} already done (resumed)" if self.already_done else ""
        return (f"run {self.run_id}: {len(self.concepts)} concept(s), {self.recorded} pair(s) recorded, "
                f"{self.skipped} skipped{resumed}; {self.bytes_written / 1e6:.2f} MB in {self.batches} batch(es), "
                f"{self.seconds:.1f} s; warehouse {self.warehouse}")


@dataclass
class PairInput:
    """A pair ready for the model: RGB original, RGB inpainted, the inpainted mask's area."""

    image_id: int
    file_name: str
    original: Image.Image
    inpainted: Image.Image
    mask_area: int
    mask_fraction: float


# ---------------------------------------------------------------------------------------------- inputs
def open_dataset(config: IngestConfig, log: Log | None = None) -> CocoDataset:
    """The COCO split to read; the embedded world is generated first when it is the default and missing."""
    if config.coco_root is not None:
        return CocoDataset(Path(config.coco_root).expanduser(), config.split)
    from engine.data.world import WorldConfig, ensure_world, read_world_manifest

    root = default_world_path()
    manifest = read_world_manifest(root)
    if not (manifest and manifest.get("complete")):
        if log:
            log(f"generating the embedded world into {root} (once)")
        ensure_world(root, WorldConfig())
    return CocoDataset(root, config.split)


def resolve_concepts(dataset: CocoDataset, config: IngestConfig) -> tuple[list[str], bool]:
    """Canonical category names to ingest and whether they were chosen automatically.

    Named concepts must exist (`CocoDataset.category_id` raises the one-line error) and have an image.
    """
    if config.concepts:
        names = list(dict.fromkeys(dataset.categories[dataset.category_id(name)] for name in config.concepts))
        for name in names:
            if not dataset.images_with(name, min_area=config.min_area):
                raise KneuronError(f"concept {name!r} has no image in split {dataset.split!r} of {dataset.root}"
                                   + (f" with an instance of >= {config.min_area:g} px" if config.min_area else ""))
        return names, False
    names = [name for name in dataset.categories.values()
             if len(dataset.images_with(name, min_area=config.min_area)) >= config.min_images]
    if not names:
        raise KneuronError(f"no category of split {dataset.split!r} in {dataset.root} has >= {config.min_images} "
                           f"images; lower --min-images or name --concept")
    return names, True


def concept_token_ids(adapter: VLMAdapter, concepts: Sequence[str], automatic: bool,
                      notes: list[str]) -> tuple[list[str], dict[str, list[int]]]:
    """Sub-tokens of each concept word; drop (automatic) or refuse (named) words the tokenizer does not know."""
    unk = getattr(adapter.tokenizer, "unk_token_id", None)
    kept: list[str] = []
    tokens: dict[str, list[int]] = {}
    for concept in concepts:
        ids = [int(i) for i in adapter.concept_tokens(concept)]
        if not ids or (unk is not None and int(unk) in ids):
            message = f"concept {concept!r} is not in the vocabulary of model {adapter.name} (encodes to {ids})"
            if not automatic:
                raise KneuronError(message)
            notes.append(message + "; left out")
            continue
        if len(ids) > 1:
            notes.append(f"concept {concept!r} is {len(ids)} sub-tokens {ids}; y^c uses the first ({ids[0]})")
        kept.append(concept)
        tokens[concept] = ids
    if not kept:
        raise KneuronError(f"none of the concepts is in the vocabulary of model {adapter.name}")
    return kept, tokens


def plan_splits(dataset: CocoDataset, concepts: Sequence[str], config: IngestConfig
                ) -> dict[str, tuple[list[int], list[int]]]:
    """concept -> (identification images to record, evaluation images), both ascending.

    The split is `split_ident_eval` of the concept's images keyed by the concept name; ``images_per_concept``
    keeps the lowest ids of the identification set (the rest are neither recorded nor stored).
    """
    out: dict[str, tuple[list[int], list[int]]] = {}
    for concept in concepts:
        ids = dataset.images_with(concept, min_area=config.min_area)
        ident, evaluation = split_ident_eval(ids, config.ident_fraction, config.seed, key=concept)
        if config.images_per_concept is not None:
            ident = ident[: config.images_per_concept]
        out[concept] = (ident, evaluation)
    return out


def stored_splits(warehouse: Any, run_id: str, concepts: Sequence[str]) -> dict[str, tuple[list[int], list[int]]]:
    """The ``splits`` rows of ``run_id`` as concept -> (ident, eval), for resuming."""
    rows = warehouse.read("splits", run_id=run_id).to_pydict()
    out: dict[str, tuple[list[int], list[int]]] = {concept: ([], []) for concept in concepts}
    for concept, image_id, split in zip(rows["concept"], rows["image_id"], rows["split"]):
        if concept in out:
            out[concept][0 if split == "ident" else 1].append(int(image_id))
    missing = [concept for concept in concepts if not any(out[concept])]
    if missing:
        raise KneuronError(f"run {run_id} in {warehouse.root} has no stored splits for {missing}; "
                           "the warehouse is incomplete — ingest into a new run (--run-id)")
    return {concept: (sorted(ident), sorted(evaluation)) for concept, (ident, evaluation) in out.items()}


def build_inpainter(config: IngestConfig, device: str) -> Inpainter:
    if config.inpainter in ("telea", "ns"):
        return get_inpainter(config.inpainter, radius=config.inpaint_radius)
    dtype = "float16" if device.startswith("cuda") else "float32"
    return get_inpainter("sd", model=config.sd_model, seed=config.sd_seed, steps=config.sd_steps,
                         device=device, dtype=dtype)


def prepare_pair(dataset: CocoDataset, concept: str, image_id: int, inpainter: Inpainter, margin_px: float
                 ) -> PairInput | SampleRow:
    """Load the image, build the dilated removal mask and inpaint it; a `SampleRow` skip on bad input."""
    try:
        file_name = dataset.image_path(image_id).name
    except KneuronError as exc:
        return SampleRow(concept, image_id, "", status="skipped", skip_reason=str(exc))
    try:
        original = dataset.load_image(image_id)
        mask = removal_mask([dataset.concept_mask(image_id, concept)], (original.height, original.width), margin_px)
        inpainted = Image.fromarray(inpainter.inpaint(np.asarray(original), mask))
    except KneuronError as exc:
        return SampleRow(concept, image_id, file_name, status="skipped", skip_reason=" ".join(str(exc).split()))
    area = int(mask.sum())
    return PairInput(image_id, file_name, original, inpainted, area, area / float(mask.size))


def choose_target(caption_ids: Sequence[int], concept_ids: Sequence[int], prefix_ids: Sequence[int]) -> Target:
    """The teacher-forced tokens and the place of ``y^c`` for one original image.

    ``caption``: the first place where the concept's sub-tokens occur in the model's own caption; the tokens are
    the caption up to and including the concept's first sub-token. ``prefix``: the concept word is not in the
    caption: teacher-force the answer prefix, ``y^c`` is read right after it.
    """
    caption_ids = [int(t) for t in caption_ids]
    concept_ids = [int(t) for t in concept_ids]
    m = len(concept_ids)
    for j in range(len(caption_ids) - m + 1):
        if caption_ids[j:j + m] == concept_ids:
            return Target(tuple(caption_ids[: j + 1]), j, concept_ids[0], source="caption")
    prefix = tuple(int(t) for t in prefix_ids)
    return Target(prefix, len(prefix), concept_ids[0], source="prefix")


# ---------------------------------------------------------------------------------------------- provenance
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


def prompt_text(adapter: VLMAdapter) -> str:
    """The prompt around the image as text (template with the instruction filled in)."""
    spec = getattr(adapter, "spec", None)
    instruction = getattr(spec, "instruction", None) or getattr(adapter, "instruction", None) or DEFAULT_INSTRUCTION
    template = getattr(adapter, "template", None)
    if hasattr(template, "render"):
        return template.render(instruction)
    if isinstance(template, str) and template:
        return template.format(instruction=instruction)
    return instruction


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def kneuron_version() -> str:
    try:
        return importlib.metadata.version("kneuron")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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


def runs_row(run_id: str, adapter: VLMAdapter, identity: dict[str, Any], config: IngestConfig, n_positions: int,
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


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_existing_run(warehouse: Any, run_id: str, identity: dict[str, Any]) -> None:
    """A run id already in the warehouse must have been made with the same identity."""
    rows = warehouse.read("runs", run_id=run_id).to_pylist()
    stored = json.loads(rows[0]["config_json"]).get("identity") if rows else None
    if stored != json.loads(json.dumps(identity, sort_keys=True, default=str)):
        changed = sorted(k for k in set(identity) | set(stored or {}) if (stored or {}).get(k) != identity.get(k))
        raise KneuronError(f"run {run_id} already exists in {warehouse.root} with a different config "
                           f"({', '.join(changed)}); choose another --run-id")


# ---------------------------------------------------------------------------------------------- the batches
@dataclass
class _Context:
    config: IngestConfig
    dataset: CocoDataset
    adapter: VLMAdapter
    inpainter: Inpainter
    concept_ids: dict[str, list[int]]
    prefix_ids: list[int]
    run_id: str


def record_chunk(ctx: _Context, concept: str, image_ids: Sequence[int]
                 ) -> tuple[list[SampleRow], list[int], PairRecord | None]:
    """Samples rows of a chunk of one concept's images, the ids recorded and their `PairRecord` (or None)."""
    rows: list[SampleRow] = []
    pairs: list[PairInput] = []
    for image_id in image_ids:
        prepared = prepare_pair(ctx.dataset, concept, image_id, ctx.inpainter, ctx.config.margin_px)
        if isinstance(prepared, SampleRow):
            rows.append(prepared)
        else:
            pairs.append(prepared)
    if not pairs:
        return rows, [], None
    if ctx.config.save_inpainted:
        folder = Path(ctx.config.save_inpainted) / quote(concept, safe=" ")
        folder.mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            pair.inpainted.save(folder / f"{pair.image_id:012d}.png")
    b = len(pairs)
    captions = caption_images(ctx.adapter, [p.original for p in pairs] + [p.inpainted for p in pairs],
                              batch_size=2 * b)
    targets = [choose_target(captions.token_ids[k], ctx.concept_ids[concept], ctx.prefix_ids) for k in range(b)]
    record = record_pairs(ctx.adapter, [p.original for p in pairs], [p.inpainted for p in pairs], targets,
                          RecordConfig(positions=ctx.config.positions, top_k=ctx.config.top_k))
    for k, (pair, target) in enumerate(zip(pairs, targets)):
        rows.append(SampleRow(
            concept, pair.image_id, pair.file_name, mask_area=pair.mask_area, mask_fraction=pair.mask_fraction,
            caption_original=captions.texts[k], caption_inpainted=captions.texts[b + k],
            target_token_id=target.token_id, target_source=target.source,
            target_position=int(record.target_position[k]),
        ))
    return rows, [p.image_id for p in pairs], record


def run_ingest(config: IngestConfig, adapter: VLMAdapter | None = None, log: Log | None = None) -> IngestSummary:
    """Ingest ``config`` into its warehouse (resuming the run if it is already there); see the module docstring.

    ``adapter``: an already loaded model (then ``config.model``/``device``/``dtype`` are not used).
    ``log``: where one-line notes go (e.g. ``click.echo``); they are also in the summary.
    """
    from tqdm.auto import tqdm

    from warehouse import Warehouse
    from warehouse.schema import RUN_ID_PATTERN

    config.validate()
    if config.run_id is not None and not RUN_ID_PATTERN.fullmatch(config.run_id):
        raise KneuronError(f"bad run id {config.run_id!r}: use 1-128 of A-Z a-z 0-9 _ . - (starting alphanumeric)")
    started = time.perf_counter()
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if log:
            log(message)

    dataset = open_dataset(config, log=note)
    concepts, automatic = resolve_concepts(dataset, config)
    with Warehouse.open(config.warehouse, create=True) as wh:
        if adapter is None:
            adapter = load_model(config.model, device=resolve_device(config.device),
                                 dtype=None if config.dtype == "auto" else config.dtype)
        device = str(adapter.device)
        inpainter = build_inpainter(config, device)
        token_notes: list[str] = []
        concepts, concept_ids = concept_token_ids(adapter, concepts, automatic, token_notes)
        for message in token_notes:
            note(message)
        identity = run_identity(adapter, dataset, concepts, config, inpainter)
        run_id = config.run_id or make_run_id(adapter.name, identity)
        resumed = run_id in wh.run_ids()
        if resumed:
            check_existing_run(wh, run_id, identity)
            splits = stored_splits(wh, run_id, concepts)
            pending_run: dict[str, Any] | None = None
        else:
            splits = plan_splits(dataset, concepts, config)
            extra = {"device": device, "concept_tokens": concept_ids, "dataset_split_sizes": {
                c: [len(i), len(e)] for c, (i, e) in splits.items()}}
            pending_run = runs_row(run_id, adapter, identity, config,
                                   count_positions(adapter, config.positions), extra)
        finished = wh.finished_pairs(run_id)
        prefix = adapter.answer_prefix
        ctx = _Context(config, dataset, adapter, inpainter, concept_ids,
                       adapter.encode(prefix) if prefix else [], run_id)
        chunks = [(concept, ident[start:start + config.batch_size])
                  for concept, (ident, _) in splits.items()
                  for start in range(0, len(ident), config.batch_size)]
        total = sum(len(ids) for _, ids in chunks)
        summary = IngestSummary(run_id=run_id, warehouse=str(wh.root), concepts=list(concepts), pairs_total=total,
                                resumed=resumed, notes=notes)
        todo = [(concept, [i for i in ids if (concept, i) not in finished]) for concept, ids in chunks]
        todo = [(concept, ids) for concept, ids in todo if ids]
        summary.already_done = total - sum(len(ids) for _, ids in todo)
        if pending_run is not None and not todo:
            todo = [(None, [])]  # a run without pairs still stores its runs and splits rows
        bar = tqdm(total=total, initial=summary.already_done, unit="pair", desc=f"ingest {run_id}",
                   disable=None if config.progress else True, dynamic_ncols=True, smoothing=0.1)
        try:
            for concept, ids in todo:
                rows, recorded_ids, record = record_chunk(ctx, concept, ids) if concept else ([], [], None)
                with wh.batch() as batch:
                    if pending_run is not None:
                        batch.add("runs", pending_run)
                        batch.add("splits", splits_columns(run_id, splits))
                    if rows:
                        batch.add("samples", samples_columns(run_id, rows))
                    if record is not None:
                        batch.add("neuron_stats", neuron_stats_table(run_id, concept, recorded_ids, record))
                        batch.add("token_stats", token_stats_table(run_id, concept, recorded_ids, record))
                pending_run = None
                if batch.record is not None:
                    summary.batches += 1
                    summary.bytes_written += sum(entry.bytes for entry in batch.record.files)
                summary.recorded += len(recorded_ids)
                summary.skipped += len(rows) - len(recorded_ids)
                bar.update(len(ids))
                bar.set_postfix(skipped=summary.skipped, refresh=False)
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary
