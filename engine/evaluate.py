"""Suppression evaluation: caption each concept's target and other images with a neuron set zeroed, score the
captions, store everything in the warehouse and summarise it per method.

For every concept ``k`` (with a selected ``two_stage`` set ``N_k`` in the run) and every method ``M``:

- **images** (from the run's ``splits`` table): *target* = the evaluation images of ``k`` (optionally at most
  ``max_images``, a seeded choice); *other* = evaluation images of the run's other concepts that do not
  contain ``k``, as many as the target images (``n_other = "match"``) or a fixed number, a seeded choice;
- **neuron set**: ``two_stage`` = ``N_k`` itself; a baseline = `engine.baselines` at the budget (``|N_k|`` by
  default, ``budget = "same_as:two_stage"``; or a number). A baseline set already in ``neuron_sets`` (same run,
  concept, method and params, hence the same ``set_id``) is reused; a new one is stored with the results;
- **captions**: greedy, batched, KV cache on, with the set zeroed at every position and decoding step
  (`caption_images`); the unmodified captions are made once per image and reused: looked up first in memory,
  then in ``captions`` (condition ``unmodified``, same run, same generation settings);
- **scores** (`CaptionScorer`, 0-1): BLEU-4, ROUGE-L F1, BERTScore F1 of the suppressed caption against (a) the
  unmodified caption and (b) the ground-truth captions. The unmodified captions are scored against the same
  references (against themselves: the value identical strings get), so every drop is ``before - after``.
  Scores are cached by (caption, references), so identical captions get identical values and an empty set
  gives a drop of exactly 0.

Warehouse writes (one atomic batch each): per concept the ``unmodified`` captions and scores (method
``unmodified``, no set), then per (concept, method) the suppressed captions, their scores and any new baseline
set; the ``evals`` row comes with the first batch. The ``eval_id`` is a hash of everything that determines the
results, so rerunning the same evaluation resumes it: (concept, method) pairs already stored are skipped.
The summary (`engine.eval.summary`) is computed from the stored rows of the evaluation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

import queries
from engine.baselines.base import BaselineContext, ReferenceSet, concept_rng, get_baseline
from engine.errors import KneuronError
from engine.eval.metrics import METRICS, CaptionScorer, MetricConfig
from engine.eval.summary import UNMODIFIED, ImageOutcome, paper_tables, summarize
from engine.models.base import VLMAdapter
from engine.suppress import as_neuron_set, caption_images

REFERENCE_METHOD = "two_stage"
DEFAULT_METHODS: tuple[str, ...] = ("two_stage", "stage1_only", "stage2_only", "random", "random_layer_matched",
                                    "pan", "dai")
SAME_AS_REFERENCE = "same_as:two_stage"

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- config
@dataclass
class EvalConfig:
    """One suppression evaluation (``kneuron suppress --config FILE.toml`` reads the same keys).

    run_id: warehouse run (None: the latest). eval_id: None = derived from everything that determines the
        results (rerunning resumes).
    concepts: concepts to evaluate (empty: every concept with a two_stage set). methods: ``two_stage`` and/or
        registered baselines (`engine.baselines.BASELINES`).
    sets: explicit two_stage set ids (at most one per concept; default: each concept's latest two_stage set).
    selection: select the two_stage sets with these thresholds instead (keys of `queries.selection`:
        ``stage1``/``stage2`` as ``auto | abs:V | q:Q | top:N``, ``aggregate``, ``min_share``, ``reduce``,
        ``stage2_pool``); new sets are stored.
    budget: baseline size: ``"same_as:two_stage"`` (|N_k|) or a number; budget_per_concept overrides it.
    n_other: other images per concept: ``"match"`` (as many as target images) or a number.
    max_images: at most this many target images per concept (seeded choice); None = all.
    batch_size: images per captioning batch (and per forward in the model-based baselines).
    max_new_tokens: None = the model's default. seed: image choices and random baselines.
    metrics: metric names (subset of bleu4, rougeL, bertscore); metric_config: BERTScore model etc.
    baseline_options: method -> keyword options (e.g. ``{"dai": {"steps": 20}}``).
    model / device / dtype: override the run's model (default: the run's ``model_name`` and dtype; device
        ``auto`` = CUDA when available). dataset_root / dataset_split: override the run's dataset.
    """

    run_id: str | None = None
    eval_id: str | None = None
    concepts: tuple[str, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    sets: tuple[str, ...] = ()
    selection: Mapping[str, Any] | None = None
    budget: str | int = SAME_AS_REFERENCE
    budget_per_concept: Mapping[str, int] = field(default_factory=dict)
    n_other: str | int = "match"
    max_images: int | None = None
    batch_size: int = 16
    max_new_tokens: int | None = None
    seed: int = 0
    metrics: tuple[str, ...] = METRICS
    metric_config: MetricConfig = field(default_factory=MetricConfig)
    baseline_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    dataset_root: str | None = None
    dataset_split: str | None = None

    def validate(self) -> None:
        """Raise `KneuronError` naming the first impossible value."""
        from engine.baselines.base import BASELINES
        import engine.baselines  # noqa: F401  (registers the baselines)

        known = [REFERENCE_METHOD, *sorted(BASELINES)]
        for method in self.methods:
            if method not in known:
                raise KneuronError(f"unknown method {method!r}; known: {', '.join(known)}")
        if not self.methods:
            raise KneuronError("no methods to evaluate")
        if len(set(self.methods)) != len(self.methods):
            raise KneuronError(f"methods listed twice: {list(self.methods)}")
        for metric in self.metrics:
            if metric not in METRICS:
                raise KneuronError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        if isinstance(self.budget, str):
            if self.budget != SAME_AS_REFERENCE:
                raise KneuronError(f"budget must be {SAME_AS_REFERENCE!r} or a whole number >= 0, got {self.budget!r}")
        elif not _whole(self.budget):
            raise KneuronError(f"budget must be {SAME_AS_REFERENCE!r} or a whole number >= 0, got {self.budget!r}")
        for concept, value in self.budget_per_concept.items():
            if not _whole(value):
                raise KneuronError(f"budget of concept {concept!r} must be a whole number >= 0, got {value!r}")
        if isinstance(self.n_other, str):
            if self.n_other != "match":
                raise KneuronError(f"n_other must be 'match' or a whole number >= 0, got {self.n_other!r}")
        elif not _whole(self.n_other):
            raise KneuronError(f"n_other must be 'match' or a whole number >= 0, got {self.n_other!r}")
        if self.max_images is not None and (not _whole(self.max_images) or self.max_images < 1):
            raise KneuronError(f"max_images must be a whole number >= 1, got {self.max_images!r}")
        if not _whole(self.batch_size) or self.batch_size < 1:
            raise KneuronError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if self.max_new_tokens is not None and (not _whole(self.max_new_tokens) or self.max_new_tokens < 1):
            raise KneuronError(f"max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}")
        if not _whole(self.seed):
            raise KneuronError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if self.sets and self.selection is not None:
            raise KneuronError("give either sets or selection, not both")
        for method in self.baseline_options:
            if method not in BASELINES:
                raise KneuronError(f"options for unknown baseline {method!r}; known: {', '.join(sorted(BASELINES))}")

    def identity(self) -> dict[str, Any]:
        """The settings that change results, less those resolved elsewhere (run, concepts) and those that do not
        (batch size, device, eval id)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("eval_id", "run_id", "concepts", "batch_size", "device", "metric_config")}
        data["metric_config"] = {"bertscore_model": self.metric_config.bertscore_model,
                                 "bertscore_layers": self.metric_config.bertscore_layers}
        return json.loads(json.dumps(data, sort_keys=True, default=_jsonable))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, Mapping) else str(value)


#: TOML keys -> EvalConfig fields (tables handled separately: metrics, selection, baselines, budget_per_concept)
_SCALAR_KEYS: dict[str, str] = {
    "run": "run_id", "run_id": "run_id", "eval_id": "eval_id", "budget": "budget", "n_other": "n_other",
    "max_images": "max_images", "batch_size": "batch_size", "max_new_tokens": "max_new_tokens", "seed": "seed",
    "model": "model", "device": "device", "dtype": "dtype", "dataset_root": "dataset_root",
    "dataset_split": "dataset_split",
}
_LIST_KEYS = ("concepts", "methods", "sets")
_TABLE_KEYS = ("metrics", "selection", "baselines", "budget_per_concept")
_METRIC_KEYS = ("names", "bertscore_model", "bertscore_layers", "device", "batch_size")
_SELECTION_KEYS = ("stage1", "stage2", "aggregate", "min_share", "reduce", "stage2_pool")


def load_config(path: str | Path) -> EvalConfig:
    """Read an `EvalConfig` from a TOML file; any problem is one `KneuronError` line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KneuronError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KneuronError(f"bad TOML in {path}: {' '.join(str(exc).split())}") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> EvalConfig:
    """An `EvalConfig` from the TOML structure (see `load_config`); unknown keys and wrong types are errors."""
    known = sorted([*_SCALAR_KEYS, *_LIST_KEYS, *_TABLE_KEYS])
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SCALAR_KEYS:
            kwargs[_SCALAR_KEYS[key]] = value
        elif key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise KneuronError(f"{source}: {key} must be a list of strings, got {value!r}")
            kwargs[key] = tuple(value)
        elif key in _TABLE_KEYS:
            if not isinstance(value, dict):
                raise KneuronError(f"{source}: [{key}] must be a table, got {value!r}")
        else:
            raise KneuronError(f"{source}: unknown key {key!r} (known: {', '.join(known)})")
    for key, expected in (("run_id", str), ("eval_id", str), ("model", str), ("device", str), ("dtype", str),
                          ("dataset_root", str), ("dataset_split", str)):
        if key in kwargs and not isinstance(kwargs[key], expected):
            raise KneuronError(f"{source}: {key} must be a string, got {kwargs[key]!r}")
    for key in ("budget", "n_other", "max_images", "batch_size", "max_new_tokens", "seed"):
        if key in kwargs and isinstance(kwargs[key], (float, bool)):
            raise KneuronError(f"{source}: {key} must be a whole number, got {kwargs[key]!r}")
    if "metrics" in data:
        metrics = dict(data["metrics"])
        unknown = [k for k in metrics if k not in _METRIC_KEYS]
        if unknown:
            raise KneuronError(f"{source}: unknown key {unknown[0]!r} in [metrics] (known: {', '.join(_METRIC_KEYS)})")
        names = metrics.pop("names", None)
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(v, str) for v in names):
                raise KneuronError(f"{source}: metrics.names must be a list of strings, got {names!r}")
            kwargs["metrics"] = tuple(names)
        try:
            kwargs["metric_config"] = MetricConfig(**metrics)
        except TypeError as exc:
            raise KneuronError(f"{source}: bad [metrics]: {exc}") from None
    if "selection" in data:
        unknown = [k for k in data["selection"] if k not in _SELECTION_KEYS]
        if unknown:
            raise KneuronError(f"{source}: unknown key {unknown[0]!r} in [selection] "
                               f"(known: {', '.join(_SELECTION_KEYS)})")
        kwargs["selection"] = dict(data["selection"])
    if "baselines" in data:
        options = {}
        for method, values in data["baselines"].items():
            if not isinstance(values, dict):
                raise KneuronError(f"{source}: [baselines.{method}] must be a table, got {values!r}")
            options[method] = dict(values)
        kwargs["baseline_options"] = options
    if "budget_per_concept" in data:
        kwargs["budget_per_concept"] = dict(data["budget_per_concept"])
    config = EvalConfig(**kwargs)
    try:
        config.validate()
    except KneuronError as exc:
        raise KneuronError(f"{source}: {exc}") from None
    return config


# ---------------------------------------------------------------------------------------------- results
@dataclass
class EvalResult:
    """What `run_evaluation` did and found."""

    eval_id: str
    run_id: str
    concepts: list[str]
    methods: list[str]
    summary: pa.Table
    jobs_run: int = 0
    jobs_skipped: int = 0
    notes: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pa.Table]:
        """The paper-shaped tables (`engine.eval.summary.paper_tables`) of the average over concepts."""
        return paper_tables(self.summary, metrics=_metrics_in(self.summary), methods=self.methods)


def _metrics_in(summary: pa.Table) -> list[str]:
    present = set(summary.column("measure").to_pylist())
    return [m for m in METRICS if m in present]


@dataclass
class EvalImages:
    """Per concept: target image ids and other image ids (ascending)."""

    target: dict[str, list[int]]
    other: dict[str, list[int]]


# ---------------------------------------------------------------------------------------------- scoring
class ScoreCache:
    """`CaptionScorer` results cached by (hypothesis, references): equal inputs always get equal values."""

    def __init__(self, scorer: CaptionScorer, metrics: Sequence[str]) -> None:
        self.scorer = scorer
        self.metrics = tuple(metrics)
        self._values: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}

    def score(self, pairs: Sequence[tuple[str, tuple[str, ...]]]) -> list[dict[str, float]]:
        """``{metric: value}`` for each (hypothesis, references) pair."""
        missing = list(dict.fromkeys(p for p in pairs if p not in self._values))
        if missing:
            values = self.scorer.score([h for h, _ in missing], [list(r) for _, r in missing], self.metrics)
            for index, pair in enumerate(missing):
                self._values[pair] = {m: float(values[m][index]) for m in self.metrics}
        return [self._values[p] for p in pairs]


# ---------------------------------------------------------------------------------------------- warehouse reads
def _one_run(wh: Any, con: Any, run_id: str | None) -> dict[str, Any]:
    from queries.selection import latest_run

    run_id = run_id or latest_run(con)
    rows = wh.read("runs", run_id=run_id).to_pylist()
    if not rows:
        raise KneuronError(f"run {run_id!r} is not in warehouse {wh.root}")
    return rows[0]


def stored_sets(con: Any, run_id: str, set_ids: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """set_id -> {concept, method, params, created_at, neurons [(layer, unit, score)]} of a run's stored sets."""
    table = queries.run(con, "suppress_neuron_sets", {"run_id": run_id, "methods": [], "set_ids": list(set_ids)})
    return _sets_from_table(table)


def _reference_from(set_id: str, entry: Mapping[str, Any]) -> ReferenceSet:
    params = {k: v for k, v in entry["params"].items() if k != "resolved"}
    return ReferenceSet(set_id=set_id, params=params,
                        neurons=tuple(sorted((layer, unit) for layer, unit, _ in entry["neurons"])))


def reference_sets(config: EvalConfig, wh: Any, con: Any, run_id: str, sets: dict[str, dict[str, Any]],
                   log: Log) -> dict[str, ReferenceSet]:
    """concept -> its two_stage set: explicit ``sets``, a new ``selection``, or the latest stored one."""
    if config.selection is not None:
        from queries.selection import SelectionConfig, ThresholdSpec, run_selection, store_neuron_sets

        options = dict(config.selection)
        try:
            selection_config = SelectionConfig(
                run_id=run_id, concepts=tuple(config.concepts),
                stage1=ThresholdSpec.parse(str(options.pop("stage1", "auto"))),
                stage2=ThresholdSpec.parse(str(options.pop("stage2", "auto"))), baselines=True, **options)
        except TypeError as exc:
            raise KneuronError(f"bad selection options: {exc}") from None
        selection = run_selection(con, selection_config)
        written, _ = store_neuron_sets(wh, selection.neuron_sets)
        if written:
            log(f"selection: stored {len(written)} new neuron set(s)")
        chosen = {row["concept"]: row["set_id"] for row in selection.summary.to_pylist()
                  if row["method"] == REFERENCE_METHOD and row["n_selected"]}
        sets.update(_sets_from_table(selection.neuron_sets))
    elif config.sets:
        chosen = {}
        for set_id in config.sets:
            if set_id not in sets:
                raise KneuronError(f"neuron set {set_id!r} is not in run {run_id!r}")
            entry = sets[set_id]
            if entry["method"] != REFERENCE_METHOD:
                raise KneuronError(f"neuron set {set_id!r} is a {entry['method']} set, not {REFERENCE_METHOD}")
            if entry["concept"] in chosen:
                raise KneuronError(f"two sets given for concept {entry['concept']!r}: "
                                   f"{chosen[entry['concept']]} and {set_id}")
            chosen[entry["concept"]] = set_id
    else:
        latest: dict[str, tuple[Any, str]] = {}
        for set_id, entry in sets.items():
            if entry["method"] == REFERENCE_METHOD:
                key = (entry["created_at"], set_id)
                if entry["concept"] not in latest or key > latest[entry["concept"]]:
                    latest[entry["concept"]] = key
        chosen = {concept: key[1] for concept, key in latest.items()}
    return {concept: _reference_from(set_id, sets[set_id]) for concept, set_id in sorted(chosen.items())}


def _sets_from_table(table: pa.Table) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        entry = out.setdefault(row["set_id"], {"concept": row["concept"], "method": row["method"],
                                               "params": json.loads(row["params_json"]),
                                               "created_at": row["created_at"], "neurons": []})
        entry["neurons"].append((int(row["layer"]), int(row["unit"]), row["score"]))
    return out


def run_images(con: Any, run_id: str) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(concept -> evaluation image ids, concept -> identification image ids) of a run."""
    table = queries.run(con, "suppress_images", {"run_id": run_id}).to_pydict()
    evaluation: dict[str, list[int]] = {}
    ident: dict[str, list[int]] = {}
    for concept, image_id, role in zip(table["concept"], table["image_id"], table["role"]):
        (evaluation if role == "eval" else ident).setdefault(concept, []).append(int(image_id))
    return evaluation, ident


def choose_images(config: EvalConfig, concepts: Sequence[str], eval_images: Mapping[str, Sequence[int]],
                  contains: Callable[[int, str], bool]) -> EvalImages:
    """Target and other images per concept (module docstring); deterministic in ``config.seed``."""
    pool_all = sorted({int(i) for ids in eval_images.values() for i in ids})
    target: dict[str, list[int]] = {}
    other: dict[str, list[int]] = {}
    for concept in concepts:
        ids = sorted({int(i) for i in eval_images.get(concept, ())})
        if config.max_images is not None and len(ids) > config.max_images:
            pick = concept_rng(config.seed, concept, "target").permutation(len(ids))[: config.max_images]
            ids = sorted(ids[i] for i in pick)
        target[concept] = ids
        pool = [i for i in pool_all if not contains(i, concept)]
        n = len(ids) if config.n_other == "match" else int(config.n_other)
        pick = concept_rng(config.seed, concept, "other").permutation(len(pool))[:n]
        other[concept] = sorted(pool[i] for i in pick)
    return EvalImages(target=target, other=other)


# ---------------------------------------------------------------------------------------------- model and data
def open_model(config: EvalConfig, run: Mapping[str, Any]) -> VLMAdapter:
    """The run's model (or ``config.model``) in the run's dtype (or ``config.dtype``)."""
    from engine.models import load_model

    identity = _run_config(run).get("identity", {})
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(config.model or run["model_name"], device=device,
                      dtype=config.dtype or identity.get("dtype") or run.get("dtype"))


def open_dataset(config: EvalConfig, run: Mapping[str, Any]) -> Any:
    """The run's COCO-format dataset split (or ``config.dataset_root`` / ``dataset_split``)."""
    from engine.data.coco import CocoDataset

    identity = _run_config(run).get("identity", {})
    root = config.dataset_root or identity.get("dataset")
    split = config.dataset_split or identity.get("split")
    if not root or not split:
        raise KneuronError(f"run {run['run_id']!r} does not record its dataset; give dataset_root and dataset_split")
    return CocoDataset(Path(root).expanduser(), split)


def _run_config(run: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(run.get("config_json") or "{}")
    except ValueError:
        return {}


def generation_settings(adapter: VLMAdapter, run: Mapping[str, Any], config: EvalConfig) -> dict[str, Any]:
    """What the unmodified captions depend on; its hash is the cache key of stored unmodified captions."""
    return {"model_name": adapter.name, "model_hash": run.get("model_hash") if config.model is None else None,
            "dtype": str(adapter.dtype).removeprefix("torch."), "prompt": run.get("prompt"),
            "max_new_tokens": config.max_new_tokens or adapter.max_new_tokens, "decoding": "greedy"}


def _metric_provenance(scorer: CaptionScorer) -> dict[str, Any]:
    """`CaptionScorer.config_dict`, or the BERTScore identity alone where sacrebleu cannot sign yet."""
    try:
        return scorer.config_dict()
    except ValueError:  # sacrebleu's signature needs one scored sentence first
        return {"scale": "0-1", "bertscore": {"model_id": scorer.model_id, "num_layers": scorer.num_layers}}


def _hash(data: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=_jsonable).encode("utf-8")).hexdigest()[:n]


# ---------------------------------------------------------------------------------------------- the runner
class _Evaluation:
    """State of one evaluation while it runs (model, caches, warehouse writer)."""

    def __init__(self, config: EvalConfig, wh: Any, run_id: str, eval_id: str,
                 eval_row: Callable[[], dict[str, list[Any]]] | None,
                 adapter: VLMAdapter, dataset: Any, scores: ScoreCache, unmodified: dict[int, str],
                 sets: dict[str, dict[str, Any]], ctx: BaselineContext, budgets: Mapping[str, int],
                 images: EvalImages, log: Log) -> None:
        self.config, self.wh, self.run_id, self.eval_id = config, wh, run_id, eval_id
        self.eval_row = eval_row
        self.adapter, self.dataset, self.scores = adapter, dataset, scores
        self.unmodified, self.sets, self.ctx, self.budgets, self.images = unmodified, sets, ctx, budgets, images
        self.log = log
        self.generate_kwargs = {} if config.max_new_tokens is None else {"max_new_tokens": config.max_new_tokens}
        self._pixels: tuple[str, dict[int, Any]] | None = None

    # -------------------------------------------------------------- inputs
    def pixels(self, concept: str) -> dict[int, Any]:
        """The concept's target and other images (kept while the concept is evaluated)."""
        if self._pixels is None or self._pixels[0] != concept:
            ids = self.images.target[concept] + self.images.other[concept]
            self._pixels = (concept, {i: self.dataset.load_image(i) for i in ids})
        return self._pixels[1]

    def ground_truth(self, image_id: int) -> tuple[str, ...]:
        return tuple(self.dataset.captions(image_id))

    def rows(self, concept: str) -> list[tuple[str, int]]:
        return ([("target", i) for i in self.images.target[concept]]
                + [("other", i) for i in self.images.other[concept]])

    def captions(self, image_ids: Sequence[int], pixels: Mapping[int, Any],
                 neurons: Mapping[int, Sequence[int]] | None) -> list[str]:
        torch.manual_seed(self.config.seed)
        result = caption_images(self.adapter, [pixels[i] for i in image_ids], neurons,
                                batch_size=self.config.batch_size, **self.generate_kwargs)
        return result.texts

    # -------------------------------------------------------------- jobs
    def score_rows(self, concept: str, method: str, set_id: str | None, texts: Mapping[tuple[str, int], str]
                   ) -> dict[str, list[Any]]:
        """``scores`` rows of ``texts[(group, image)]`` against the unmodified captions and the ground truth."""
        keys, pairs = [], []
        for (group, image_id), text in texts.items():
            keys.append((group, image_id, "unmodified"))
            pairs.append((text, (self.unmodified[image_id],)))
            truth = self.ground_truth(image_id)
            if truth:
                keys.append((group, image_id, "ground_truth"))
                pairs.append((text, truth))
        values = self.scores.score(pairs)
        out: dict[str, list[Any]] = {name: [] for name in ("group", "image_id", "metric", "reference", "value")}
        for (group, image_id, reference), value in zip(keys, values):
            for metric in self.scores.metrics:
                out["group"].append(group)
                out["image_id"].append(image_id)
                out["metric"].append(metric)
                out["reference"].append(reference)
                out["value"].append(value[metric])
        n = len(out["group"])
        return {"eval_id": [self.eval_id] * n, "run_id": [self.run_id] * n, "set_id": [set_id] * n,
                "method": [method] * n, "concept": [concept] * n, **out}

    def caption_rows(self, concept: str, method: str, set_id: str | None, condition: str,
                     texts: Mapping[tuple[str, int], str]) -> dict[str, list[Any]]:
        n = len(texts)
        return {"eval_id": [self.eval_id] * n, "run_id": [self.run_id] * n, "set_id": [set_id] * n,
                "method": [method] * n, "concept": [concept] * n, "group": [g for g, _ in texts],
                "image_id": [i for _, i in texts], "condition": [condition] * n, "text": list(texts.values())}

    def write(self, tables: Mapping[str, Mapping[str, list[Any]]]) -> None:
        with self.wh.batch() as batch:
            if self.eval_row is not None:
                batch.add("evals", self.eval_row())
            for table, rows in tables.items():
                batch.add(table, rows)
        self.eval_row = None

    def run_unmodified(self, concept: str, write: bool) -> None:
        """Make (or reuse) the unmodified captions of the concept's images; store them with their scores."""
        pixels = self.pixels(concept)
        missing = [i for _, i in self.rows(concept) if i not in self.unmodified]
        if missing:
            for image_id, text in zip(missing, self.captions(missing, pixels, None)):
                self.unmodified[image_id] = text
        if not write:
            return
        texts = {(group, i): self.unmodified[i] for group, i in self.rows(concept)}
        self.write({"captions": self.caption_rows(concept, UNMODIFIED, None, "unmodified", texts),
                    "scores": self.score_rows(concept, UNMODIFIED, None, texts)})

    def neuron_set(self, concept: str, method: str) -> tuple[str, list[tuple[int, int, Any]], dict[str, Any] | None]:
        """(set_id, neurons, neuron_sets rows to store or None) of ``method`` for ``concept``."""
        from queries.selection import set_id_of

        if method == REFERENCE_METHOD:
            reference = self.ctx.reference(concept)
            return reference.set_id, list(self.sets[reference.set_id]["neurons"]), None
        baseline = get_baseline(method, **dict(self.config.baseline_options.get(method, {})))
        budget = self.budgets[concept]
        params = baseline.params(self.ctx, concept, budget)
        set_id = set_id_of(self.run_id, concept, method, params)
        if set_id in self.sets:
            return set_id, list(self.sets[set_id]["neurons"]), None
        neurons = baseline.select(self.ctx, concept, budget)
        if len(neurons) != budget:
            self.log(f"{method} gave {len(neurons)} neuron(s) for {concept!r} instead of {budget}")
        created_at = datetime.now(timezone.utc)
        params_json = json.dumps({**params, "resolved": {"n_selected": len(neurons)}}, sort_keys=True,
                                 separators=(",", ":"))
        self.sets[set_id] = {"concept": concept, "method": method, "params": json.loads(params_json),
                             "created_at": created_at, "neurons": list(neurons)}
        n = len(neurons)
        rows = {"set_id": [set_id] * n, "run_id": [self.run_id] * n, "concept": [concept] * n,
                "method": [method] * n, "params_json": [params_json] * n,
                "layer": [layer for layer, _, _ in neurons], "unit": [unit for _, unit, _ in neurons],
                "score": [score for _, _, score in neurons], "created_at": [created_at] * n}
        return set_id, list(neurons), rows

    def run_method(self, concept: str, method: str) -> None:
        """Suppressed captions of the concept's images for ``method``'s set, with scores; one warehouse batch."""
        set_id, neurons, new_set = self.neuron_set(concept, method)
        rows = self.rows(concept)
        texts_list = self.captions([i for _, i in rows], self.pixels(concept),
                                   as_neuron_set([(layer, unit) for layer, unit, _ in neurons]))
        texts = dict(zip(rows, texts_list))
        tables: dict[str, Mapping[str, list[Any]]] = {}
        if new_set is not None and new_set["layer"]:  # an empty set has no rows to store
            tables["neuron_sets"] = new_set
        tables["captions"] = self.caption_rows(concept, method, set_id, "suppressed", texts)
        tables["scores"] = self.score_rows(concept, method, set_id, texts)
        self.write(tables)


def run_evaluation(config: EvalConfig, warehouse_path: str | Path | None = None, adapter: VLMAdapter | None = None,
                   dataset: Any = None, scorer: CaptionScorer | None = None, progress: bool = True,
                   log: Log | None = None) -> EvalResult:
    """Run (or resume) one suppression evaluation and return its summary (see the module docstring).

    adapter / dataset / scorer: use these instead of loading the run's model, its dataset and a new
    `CaptionScorer` (tests, or a caller that already holds them).
    """
    from tqdm import tqdm

    from warehouse import Warehouse, connect

    config.validate()
    Warehouse.open(warehouse_path)  # a reader first: a missing warehouse is an error, not created empty
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if log is not None:
            log(message)

    with Warehouse.open(warehouse_path, create=True) as wh:
        con = connect(wh)
        try:
            run = _one_run(wh, con, config.run_id)
            run_id = run["run_id"]
            sets = stored_sets(con, run_id)
            references = reference_sets(config, wh, con, run_id, sets, note)
            concepts = _concepts(config, references, run_id)
            budgets = _budgets(config, references, concepts)
            adapter = adapter if adapter is not None else open_model(config, run)
            dataset = dataset if dataset is not None else open_dataset(config, run)
            eval_images, ident_images = run_images(con, run_id)
            present_cache: dict[int, tuple[str, ...]] = {}

            def present(image_id: int) -> tuple[str, ...]:
                if image_id not in present_cache:
                    present_cache[image_id] = tuple(dataset.concepts_in(image_id))
                return present_cache[image_id]

            images = choose_images(config, concepts, eval_images, lambda i, c: c in present(i))
            for concept in concepts:
                if not images.target[concept]:
                    note(f"concept {concept!r} has no evaluation images in run {run_id!r}")
            scorer = scorer if scorer is not None else CaptionScorer(config.metric_config)
            generation = generation_settings(adapter, run, config)
            generation_key = _hash(generation, 16)
            identity = {"run_id": run_id, "config": config.identity(), "concepts": concepts,
                        "references": {c: references[c].set_id for c in concepts}, "budgets": budgets,
                        "images": {c: [images.target[c], images.other[c]] for c in concepts},
                        "generation_key": generation_key, "bertscore": scorer.model_id}
            eval_id = config.eval_id or f"eval-{_hash(identity)}"
            existing = queries.run(con, "suppress_eval_row", {"eval_id": eval_id}).to_pylist()
            if existing and existing[0]["run_id"] != run_id:
                raise KneuronError(f"evaluation {eval_id!r} belongs to run {existing[0]['run_id']!r}, not {run_id!r}")
            if existing and _stored_identity(existing[0]) != json.loads(json.dumps(identity, default=_jsonable)):
                raise KneuronError(f"evaluation {eval_id!r} is stored with other settings; choose another eval_id "
                                   "or leave it out (derived from the settings)")

            def eval_row() -> dict[str, list[Any]]:  # made at the first write: metric signatures need a score
                details = {**identity, "generation": generation, "methods": list(config.methods),
                           "metrics": _metric_provenance(scorer), "batch_size": config.batch_size}
                return {"eval_id": [eval_id], "run_id": [run_id], "created_at": [datetime.now(timezone.utc)],
                        "config_json": [json.dumps(details, sort_keys=True, default=_jsonable)]}

            done = {(c, m) for c, m in _done_jobs(con, eval_id)}
            cached = queries.run(con, "suppress_cached_captions",
                                 {"run_id": run_id, "generation_key": generation_key}).to_pydict()
            unmodified = dict(zip((int(i) for i in cached["image_id"]), cached["text"]))
            ctx = BaselineContext(adapter=adapter, dataset=dataset, run_id=run_id, ident_images=ident_images,
                                  reference_sets=references, seed=config.seed, batch_size=config.batch_size, con=con)
            evaluation = _Evaluation(config, wh, run_id, eval_id, None if existing else eval_row, adapter, dataset,
                                     ScoreCache(scorer, config.metrics), unmodified, sets, ctx, budgets, images,
                                     note)
            jobs = [(c, m) for c in concepts if images.target[c] for m in (UNMODIFIED, *config.methods)]
            skipped = sum((c, m) in done for c, m in jobs)
            with tqdm(total=len(jobs), desc="suppress", unit="job", disable=None if progress else True) as bar:
                for concept, method in jobs:
                    bar.set_postfix_str(f"{concept}/{method}", refresh=False)
                    if method == UNMODIFIED:
                        # needed by every method of the concept even when stored already
                        todo = any((concept, m) not in done for m in (UNMODIFIED, *config.methods))
                        if todo:
                            evaluation.run_unmodified(concept, write=(concept, UNMODIFIED) not in done)
                    elif (concept, method) not in done:
                        evaluation.run_method(concept, method)
                    bar.update(1)
        finally:
            con.close()
        summary = summarize_evaluation(wh, eval_id, dataset, sets, config.metrics)
    return EvalResult(eval_id=eval_id, run_id=run_id, concepts=concepts, methods=list(config.methods),
                      summary=summary, jobs_run=len(jobs) - skipped, jobs_skipped=skipped, notes=notes)


def _stored_identity(row: Mapping[str, Any]) -> dict[str, Any]:
    stored = json.loads(row["config_json"])
    return {key: stored.get(key) for key in ("run_id", "config", "concepts", "references", "budgets", "images",
                                             "generation_key", "bertscore")}


def _concepts(config: EvalConfig, references: Mapping[str, ReferenceSet], run_id: str) -> list[str]:
    if config.concepts:
        missing = [c for c in config.concepts if c not in references]
        if missing:
            raise KneuronError(f"no {REFERENCE_METHOD} neuron set for concept(s) "
                               f"{', '.join(repr(c) for c in missing)} in run {run_id!r} (run `kneuron select` first)")
        return list(dict.fromkeys(config.concepts))
    if not references:
        raise KneuronError(f"run {run_id!r} has no {REFERENCE_METHOD} neuron sets (run `kneuron select` first)")
    return sorted(references)


def _budgets(config: EvalConfig, references: Mapping[str, ReferenceSet], concepts: Sequence[str]) -> dict[str, int]:
    out = {}
    for concept in concepts:
        if concept in config.budget_per_concept:
            out[concept] = int(config.budget_per_concept[concept])
        elif config.budget == SAME_AS_REFERENCE:
            out[concept] = references[concept].size
        else:
            out[concept] = int(config.budget)
    return out


def _done_jobs(con: Any, eval_id: str) -> list[tuple[str, str]]:
    rows = queries.run(con, "suppress_eval_captions", {"eval_id": eval_id}).select(["concept", "method"]).to_pydict()
    return sorted(set(zip(rows["concept"], rows["method"])))


def summarize_evaluation(wh: Any, eval_id: str, dataset: Any, sets: Mapping[str, Mapping[str, Any]] | None = None,
                         metrics: Sequence[str] = METRICS) -> pa.Table:
    """The summary table of a stored evaluation (`engine.eval.summary.summarize` over its rows).

    dataset: gives the concepts annotated in each image (other-object retention); sets: set_id -> stored set
    (its neuron count; missing sets count 0 neurons).
    """
    from warehouse import connect

    con = connect(wh)
    try:
        captions = queries.run(con, "suppress_eval_captions", {"eval_id": eval_id}).to_pylist()
        scores = queries.run(con, "suppress_eval_scores", {"eval_id": eval_id}).to_pylist()
    finally:
        con.close()
    return summarize(outcomes_from_rows(captions, scores, dataset.concepts_in, sets or {}), metrics)


def outcomes_from_rows(captions: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Any]],
                       concepts_in: Callable[[int], Sequence[str]], sets: Mapping[str, Mapping[str, Any]]
                       ) -> list[ImageOutcome]:
    """Join stored captions and scores of one evaluation into `ImageOutcome` records (suppressed methods only)."""
    before: dict[tuple[str, str, int], str] = {}
    after: dict[tuple[str, str, str, int], tuple[str, str | None]] = {}
    for row in captions:
        if row["method"] == UNMODIFIED:
            before[(row["concept"], row["group"], int(row["image_id"]))] = row["text"]
        else:
            after[(row["concept"], row["method"], row["group"], int(row["image_id"]))] = (row["text"], row["set_id"])
    values: dict[tuple[str, str, str, int], dict[tuple[str, str], float]] = {}
    for row in scores:
        if row["value"] is None or (isinstance(row["value"], float) and math.isnan(row["value"])):
            continue
        key = (row["concept"], row["method"], row["group"], int(row["image_id"]))
        values.setdefault(key, {})[(row["metric"], row["reference"])] = float(row["value"])
    out = []
    for (concept, method, group, image_id), (text, set_id) in sorted(after.items()):
        if (concept, group, image_id) not in before:
            continue
        n_neurons = len(sets[set_id]["neurons"]) if set_id in sets else 0
        out.append(ImageOutcome(
            concept=concept, method=method, group=group, image_id=image_id,
            before=before[(concept, group, image_id)], after=text, present=tuple(concepts_in(image_id)),
            scores_before=values.get((concept, UNMODIFIED, group, image_id), {}),
            scores_after=values.get((concept, method, group, image_id), {}), n_neurons=n_neurons))
    return out


__all__ = ["DEFAULT_METHODS", "EvalConfig", "EvalImages", "EvalResult", "ScoreCache", "choose_images",
           "config_from_dict", "load_config", "outcomes_from_rows", "run_evaluation", "summarize_evaluation"]
