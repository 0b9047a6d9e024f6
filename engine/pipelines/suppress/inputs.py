"""What the suppression pipeline (`kneuron.engine.pipelines.suppress.pipeline`) reads before it captions: the run, the
two_stage
reference set of each concept, the run's images, the model and the dataset, the generation settings, and the
pieces of the ``eval_id``.

Reference sets (`reference_sets`): the sets given by id (``config.sets``, ``kneuron suppress --set``); or, with
``config.selection``, the two_stage sets of a selection run now (stored, and every selected set made current,
as ``kneuron select`` does); else each concept's *current* two_stage set
(`kneuron.engine.pipelines.sets.current_set_ids`:
the latest chosen by ``kneuron select``, else the latest stored).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import duckdb

from kneuron import queries
from kneuron.engine.baselines.base import ReferenceSet
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import REFERENCE_METHOD, SAME_AS_REFERENCE, EvalConfig, jsonable
from kneuron.engine.eval.metrics import CaptionScorer
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.sets import StoredSet, current_set_ids, sets_from_rows, store_sets
from kneuron.queries.selection import SelectionConfig, SpecificSpec, ThresholdSpec, latest_run, run_selection
from kneuron.warehouse import Warehouse

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- the run
def one_run(wh: Warehouse, con: duckdb.DuckDBPyConnection, run_id: str | None) -> dict[str, Any]:
    """The ``runs`` row of ``run_id`` (None: the latest run); `KneuronError` when it is not stored."""
    run_id = run_id or latest_run(con)
    rows = wh.read("runs", run_id=run_id).to_pylist()
    if not rows:
        raise KneuronError(f"run {run_id!r} is not in warehouse {wh.root}")
    return cast("dict[str, Any]", rows[0])


def run_images(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(concept -> evaluation image ids, concept -> identification image ids) of a run."""
    table = queries.run(con, "suppress_images", {"run_id": run_id}).to_pydict()
    evaluation: dict[str, list[int]] = {}
    ident: dict[str, list[int]] = {}
    for concept, image_id, role in zip(table["concept"], table["image_id"], table["role"], strict=True):
        (evaluation if role == "eval" else ident).setdefault(concept, []).append(int(image_id))
    return evaluation, ident


# ---------------------------------------------------------------------------------------------- reference sets
def reference_from(stored: StoredSet) -> ReferenceSet:
    """The `ReferenceSet` of a stored two_stage set (its params less ``resolved``; neurons sorted)."""
    params = {k: v for k, v in stored.params.items() if k != "resolved"}
    return ReferenceSet(set_id=stored.set_id, params=params, neurons=tuple(sorted(stored.pairs)))


def reference_sets(config: EvalConfig, wh: Warehouse, con: duckdb.DuckDBPyConnection, run_id: str,
                   sets: dict[str, StoredSet], log: Log) -> tuple[dict[str, ReferenceSet], str]:
    """(concept -> its two_stage set, how they were chosen: ``given``, ``selected now`` or ``current``).

    sets: the run's stored sets (`kneuron.engine.pipelines.sets.stored_sets`); the sets of a new selection are added.
    """
    if config.selection is not None:
        chosen = _select(config, wh, con, run_id, sets, log)
        how = "selected now"
    elif config.sets:
        chosen = _given(config.sets, run_id, sets)
        how = "given"
    else:
        chosen = {concept: set_id for (concept, _), set_id in current_set_ids(con, run_id, REFERENCE_METHOD).items()}
        how = "current"
    return {concept: reference_from(sets[set_id]) for concept, set_id in sorted(chosen.items())}, how


def _given(set_ids: Sequence[str], run_id: str, sets: Mapping[str, StoredSet]) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for set_id in set_ids:
        if set_id not in sets:
            raise KneuronError(f"neuron set {set_id!r} is not in run {run_id!r}")
        entry = sets[set_id]
        if entry.method != REFERENCE_METHOD:
            raise KneuronError(f"neuron set {set_id!r} is a {entry.method} set, not {REFERENCE_METHOD}")
        if entry.concept in chosen:
            raise KneuronError(f"two sets given for concept {entry.concept!r}: {chosen[entry.concept]} and {set_id}")
        chosen[entry.concept] = set_id
    return chosen


def _select(config: EvalConfig, wh: Warehouse, con: duckdb.DuckDBPyConnection, run_id: str,
            sets: dict[str, StoredSet], log: Log) -> dict[str, str]:
    """Run the selection of ``config.selection``; store its sets and make them current (as ``kneuron select``)."""
    options = dict(config.selection or {})
    specific = options.pop("specific", None)
    try:
        selection_config = SelectionConfig(
            run_id=run_id, concepts=tuple(config.concepts),
            stage1=ThresholdSpec.parse(str(options.pop("stage1", "auto"))),
            stage2=ThresholdSpec.parse(str(options.pop("stage2", "auto"))), baselines=True,
            specific=None if specific is None else SpecificSpec.parse(str(specific)), **options)
    except TypeError as exc:
        raise KneuronError(f"bad selection options: {exc}") from None
    selection = run_selection(con, selection_config)
    selected = sorted(set(selection.neuron_sets.column("set_id").to_pylist()))
    written, _ = store_sets(wh, selection.neuron_sets, make_current=selected)
    if written:
        log(f"selection: stored {len(written)} new neuron set(s)")
    sets.update(sets_from_rows(selection.neuron_sets))
    return {row["concept"]: row["set_id"] for row in selection.summary.to_pylist()
            if row["method"] == REFERENCE_METHOD and row["n_selected"]}


def resolve_concepts(config: EvalConfig, references: Mapping[str, ReferenceSet], run_id: str) -> list[str]:
    """The concepts to evaluate: ``config.concepts`` (each must have a reference set), else every concept that has."""
    if config.concepts:
        missing = [c for c in config.concepts if c not in references]
        if missing:
            raise KneuronError(f"no {REFERENCE_METHOD} neuron set for concept(s) "
                               f"{', '.join(repr(c) for c in missing)} in run {run_id!r} (run `kneuron select` first)")
        return list(dict.fromkeys(config.concepts))
    if not references:
        raise KneuronError(f"run {run_id!r} has no {REFERENCE_METHOD} neuron sets (run `kneuron select` first)")
    return sorted(references)


def budgets(config: EvalConfig, references: Mapping[str, ReferenceSet], concepts: Sequence[str]) -> dict[str, int]:
    """concept -> baseline budget: ``budget_per_concept``, else |N_k| (``same_as:two_stage``) or ``budget``."""
    out = {}
    for concept in concepts:
        if concept in config.budget_per_concept:
            out[concept] = int(config.budget_per_concept[concept])
        elif config.budget == SAME_AS_REFERENCE:
            out[concept] = references[concept].size
        else:
            out[concept] = int(config.budget)
    return out


# ---------------------------------------------------------------------------------------------- model and data
def run_config(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run's stored ``config_json`` ({} when missing or unreadable)."""
    try:
        config = json.loads(run.get("config_json") or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def open_model(config: EvalConfig, run: Mapping[str, Any], log: Callable[[str], None] | None = None) -> VLMAdapter:
    """The run's model (or ``config.model``) in the run's dtype (or ``config.dtype``); ``log`` hears what loads."""
    from kneuron.engine.models import load_model

    identity = run_config(run).get("identity", {})
    return load_model(config.model or run["model_name"], device=config.device,
                      dtype=config.dtype or identity.get("dtype") or run.get("dtype"), log=log)


def open_dataset(config: EvalConfig, run: Mapping[str, Any]) -> Any:
    """The run's COCO-format dataset split (or ``config.dataset_root`` / ``dataset_split``)."""
    from kneuron.engine.data.coco import CocoDataset

    identity = run_config(run).get("identity", {})
    root = config.dataset_root or identity.get("dataset")
    split = config.dataset_split or identity.get("split")
    if not root or not split:
        raise KneuronError(f"run {run['run_id']!r} does not record its dataset; give dataset_root and dataset_split")
    return CocoDataset(Path(root).expanduser(), split)


# ---------------------------------------------------------------------------------------------- identity
def generation_settings(adapter: VLMAdapter, run: Mapping[str, Any], config: EvalConfig) -> dict[str, Any]:
    """What the unmodified captions depend on; its hash is the cache key of stored unmodified captions."""
    return {"model_name": adapter.name, "model_hash": run.get("model_hash") if config.model is None else None,
            "dtype": str(adapter.dtype).removeprefix("torch."), "prompt": run.get("prompt"),
            "max_new_tokens": config.max_new_tokens or adapter.max_new_tokens, "decoding": "greedy"}


def metric_provenance(scorer: CaptionScorer) -> dict[str, Any]:
    """`CaptionScorer.config_dict`, or the BERTScore identity alone where sacrebleu cannot sign yet."""
    try:
        return scorer.config_dict()
    except ValueError:  # sacrebleu's signature needs one scored sentence first
        return {"scale": "0-1", "bertscore": {"model_id": scorer.model_id, "num_layers": scorer.num_layers}}


def hash_of(data: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``data`` as sorted-key JSON (the eval id and cache keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=jsonable).encode("utf-8")).hexdigest()[:n]


#: the keys of an evaluation's identity (``evals.config_json``), compared when an evaluation is resumed
IDENTITY_KEYS = ("run_id", "config", "concepts", "references", "budgets", "images", "generation_key", "bertscore",
                 "edited", "ablation")
#: identity keys added later: present only in evaluations that use them
OPTIONAL_IDENTITY_KEYS = ("edited", "ablation")


def stored_identity(row: Mapping[str, Any]) -> dict[str, Any]:
    """The identity part of a stored ``evals`` row."""
    stored = json.loads(row["config_json"])
    return {key: stored.get(key) for key in IDENTITY_KEYS if key in stored or key not in OPTIONAL_IDENTITY_KEYS}


__all__ = ["IDENTITY_KEYS", "budgets", "generation_settings", "hash_of", "metric_provenance", "one_run",
           "open_dataset", "open_model", "reference_from", "reference_sets", "resolve_concepts", "run_config",
           "run_images", "stored_identity"]
