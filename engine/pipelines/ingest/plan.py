"""What an ingest run reads: the dataset, its concepts and their words, the identification/evaluation split,
and each (concept, image) pair ready for the model (original and inpainted image) or skipped with its reason."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kneuron.engine.data.coco import CocoDataset, split_ident_eval
from kneuron.engine.data.names import check_concept_names
from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint import Inpainter, get_inpainter, removal_mask
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.ingest.config import IngestConfig
from kneuron.engine.pipelines.ingest.rows import SampleRow

Log = Callable[[str], None]


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
    """The COCO split to read; with the embedded world (the default), its split ``config.split`` is generated
    first when missing (only that split: the others are added when a later run reads them)."""
    if config.coco_root is not None:
        return CocoDataset(Path(config.coco_root).expanduser(), config.split)
    from kneuron.engine.data.world import (
        WorldConfig,
        default_world_path,
        ensure_world,
        read_world_manifest,
        world_splits,
    )

    root = default_world_path()
    manifest = read_world_manifest(root)
    if not (manifest and manifest.get("complete")):
        if log and config.split not in world_splits(manifest):
            log(f"generating the embedded world's {config.split} split into {root} (once)")
        ensure_world(root, WorldConfig(), splits=(config.split,))
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
        check_concept_names(names, str(dataset.instances_path))
        return names, False
    names = [name for name in dataset.categories.values()
             if len(dataset.images_with(name, min_area=config.min_area)) >= config.min_images]
    if not names:
        raise KneuronError(f"no category of split {dataset.split!r} in {dataset.root} has >= {config.min_images} "
                           f"images; lower --min-images or name --concept")
    check_concept_names(names, str(dataset.instances_path))
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
    for concept, image_id, split in zip(rows["concept"], rows["image_id"], rows["split"], strict=True):
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
