"""The settings of one suppression evaluation (`EvalConfig`), read from TOML (`load_config`) or a dict
(`config_from_dict`) with one-line errors. Pure: no model, no storage.

``EvalConfig.identity`` is the part of the settings that determines the results; the suppression pipeline
(`kneuron.engine.pipelines.suppress.pipeline`) hashes it (with the resolved run, concepts, sets, budgets, images and
generation
settings) into the ``eval_id``, so the same settings always resume the same evaluation.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import tomllib

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.metrics import METRICS, MetricConfig
from kneuron.engine.interventions import ABLATIONS

logger = logging.getLogger(__name__)

REFERENCE_METHOD = "two_stage"
DEFAULT_METHODS: tuple[str, ...] = ("two_stage", "stage1_only", "stage2_only", "random", "random_layer_matched",
                                    "pan", "dai")
SAME_AS_REFERENCE = "same_as:two_stage"
#: the method of an edited model folder (``edited_model``): its captions, no hook, scored like a suppression
EDITED_METHOD = "edited"


@dataclass
class EvalConfig:
    """One suppression evaluation (``kneuron suppress --config FILE.toml`` reads the same keys).

    run_id: warehouse run (None: the latest). eval_id: None = derived from everything that determines the
        results (rerunning resumes).
    concepts: concepts to evaluate (empty: every concept with a two_stage set). methods: ``two_stage`` and/or
        registered baselines (`kneuron.engine.baselines.BASELINES`).
    sets: explicit two_stage set ids (at most one per concept; ``kneuron suppress --set``). Default: each
        concept's current two_stage set (the latest chosen by ``kneuron select``, else the latest stored).
    selection: select the two_stage sets with these thresholds instead (keys of `kneuron.queries.selection`:
        ``stage1``/``stage2`` as ``auto | abs:V | q:Q | top:N``, ``aggregate``, ``min_share``, ``reduce``,
        ``stage2_pool``); new sets are stored.
    budget: baseline size: ``"same_as:two_stage"`` (|N_k|) or a number; budget_per_concept overrides it.
    budgets: a budget evaluation (`kneuron.engine.eval.budget`): every method at each of these sizes n, each (method, n)
        its own set labelled ``"<method>@<n>"``; two_stage at n = the top n of its stage-2 ranking within C_k
        (fewer when |C_k| < n, said in the log). Empty (default): one budget, ``budget``.
    n_other: other images per concept: ``"match"`` (as many as target images) or a number.
    max_images: at most this many target images per concept (seeded choice); None = all.
    batch_size: images per captioning batch (and per forward in the model-based baselines).
    max_new_tokens: None = the model's default. seed: image choices and random baselines.
    metrics: metric names (subset of bleu4, rougeL, bertscore); metric_config: BERTScore model etc.
    baseline_options: method -> keyword options (e.g. ``{"dai": {"steps": 20}}``).
    fragility_images: > 0 = also zero each unit of the evaluated sets alone on this many identification images
        (`kneuron.engine.pipelines.suppress.fragility`); reported, not stored, and not part of the eval id.
    model / device / dtype: override the run's model (default: the run's ``model_name`` and dtype; device
        ``auto`` = CUDA when available). dataset_root / dataset_split: override the run's dataset.
    edited_model: a folder written by ``kneuron edit``; its plain captions are the method ``edited``, scored
        against the run's model's unmodified captions like any suppression (method list must name ``edited``).
    ablation: what a suppressed unit's activation becomes (`kneuron.engine.interventions.ablation`): ``zero`` (the
    paper), ``mean``
        (its mean over ``reference_images`` identification images, per position kind) or ``resample`` (a
        seeded donor image's activation from that reference set).
    reference_images: identification images (seeded choice over the evaluated concepts) of the mean /
        resample reference set.
    rows_per_generate: (set, image) rows captioned in one generate
    (`kneuron.engine.interventions.multiset.caption_under_sets`);
        None = 4 x batch_size. Captions do not depend on it.
    """

    run_id: str | None = None
    eval_id: str | None = None
    concepts: tuple[str, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    sets: tuple[str, ...] = ()
    selection: Mapping[str, Any] | None = None
    budget: str | int = SAME_AS_REFERENCE
    budget_per_concept: Mapping[str, int] = field(default_factory=dict)
    budgets: tuple[int, ...] = ()
    fragility_images: int = 0
    n_other: str | int = "match"
    max_images: int | None = None
    batch_size: int = 16
    max_new_tokens: int | None = None
    seed: int = 0
    metrics: tuple[str, ...] = METRICS
    metric_config: MetricConfig = field(default_factory=MetricConfig)
    baseline_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model: str | None = None
    edited_model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    dataset_root: str | None = None
    dataset_split: str | None = None
    ablation: str = "zero"
    reference_images: int = 16
    rows_per_generate: int | None = None

    def validate(self) -> None:
        """Raise `KneuronError` naming the first impossible value."""
        from kneuron.engine.baselines.registry import BASELINES  # every bundled baseline registered

        self._check_methods(sorted(BASELINES))
        self._check_metrics_and_budgets()
        self._check_counts()
        if self.sets and self.selection is not None:
            raise KneuronError("give either sets or selection, not both")
        for method in self.baseline_options:
            if method not in BASELINES:
                raise KneuronError(f"options for unknown baseline {method!r}; known: {', '.join(sorted(BASELINES))}")

    def _check_methods(self, baselines: list[str]) -> None:
        known = [REFERENCE_METHOD, *baselines, *([EDITED_METHOD] if self.edited_model else [])]
        if (EDITED_METHOD in self.methods) != bool(self.edited_model):
            raise KneuronError(f"method {EDITED_METHOD!r} and edited_model (--edited-model) go together: the "
                               "edited folder's captions are that method")
        if self.edited_model and self.budgets:
            raise KneuronError("an edited model is one fixed set: give edited_model or budgets, not both")
        for method in self.methods:
            if method not in known:
                raise KneuronError(f"unknown method {method!r}; known: {', '.join(known)}")
        if not self.methods:
            raise KneuronError("no methods to evaluate")
        if len(set(self.methods)) != len(self.methods):
            raise KneuronError(f"methods listed twice: {list(self.methods)}")

    def _check_metrics_and_budgets(self) -> None:
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
        if self.budgets:
            from kneuron.engine.eval.budget import check_budgets

            check_budgets(self.budgets)
            if self.budget_per_concept or self.budget != SAME_AS_REFERENCE:
                raise KneuronError("give budgets or budget / budget_per_concept, not both")

    def _check_counts(self) -> None:
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
        if not _whole(self.fragility_images):
            raise KneuronError(f"fragility_images must be a whole number >= 0, got {self.fragility_images!r}")
        if self.ablation not in ABLATIONS:
            raise KneuronError(f"unknown ablation {self.ablation!r}; known: {', '.join(ABLATIONS)}")
        if not _whole(self.reference_images) or self.reference_images < 1:
            raise KneuronError(f"reference_images must be a whole number >= 1, got {self.reference_images!r}")
        if self.rows_per_generate is not None and (not _whole(self.rows_per_generate) or self.rows_per_generate < 1):
            raise KneuronError(f"rows_per_generate must be a whole number >= 1, got {self.rows_per_generate!r}")
        if self.ablation != "zero" and self.edited_model:
            raise KneuronError("an edited model has its units zeroed in the weights: ablation must be 'zero'")
        if not _whole(self.seed):
            raise KneuronError(f"seed must be a whole number >= 0, got {self.seed!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that change results, less those resolved elsewhere (run, concepts) and those that do not
        (batch size, device, eval id). It enters the ``eval_id``: a new field here changes every eval id, so
        old evaluations would no longer resume; fields added later (``budgets``) enter only when set."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("eval_id", "run_id", "concepts", "batch_size", "device", "metric_config",
                                  "fragility_images", "rows_per_generate")
                and not (f.name in _LATER_FIELDS and not getattr(self, f.name))
                and not (f.name in _ABLATION_FIELDS and self.ablation == "zero")}
        data["metric_config"] = {"bertscore_model": self.metric_config.bertscore_model,
                                 "bertscore_layers": self.metric_config.bertscore_layers}
        return cast("dict[str, Any]", json.loads(json.dumps(data, sort_keys=True, default=jsonable)))


#: fields added after eval ids were first stored: hashed only when set, so older evaluations keep their ids
_LATER_FIELDS = ("budgets", "edited_model")
#: hashed only for mean / resample ablation: zero ablation (the default) keeps the ids it always had
_ABLATION_FIELDS = ("ablation", "reference_images")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def jsonable(value: Any) -> Any:
    """``json.dumps`` fallback of the settings: tuples and sets as lists, dataclasses and mappings as dicts."""
    if isinstance(value, (tuple, set)):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value) if isinstance(value, Mapping) else str(value)


#: TOML keys -> EvalConfig fields (tables handled separately: metrics, selection, baselines, budget_per_concept)
_SCALAR_KEYS: dict[str, str] = {
    "run": "run_id", "run_id": "run_id", "eval_id": "eval_id", "budget": "budget", "n_other": "n_other",
    "max_images": "max_images", "batch_size": "batch_size", "max_new_tokens": "max_new_tokens", "seed": "seed",
    "model": "model", "edited_model": "edited_model", "device": "device", "dtype": "dtype",
    "dataset_root": "dataset_root", "dataset_split": "dataset_split", "fragility_images": "fragility_images",
    "ablation": "ablation", "reference_images": "reference_images", "rows_per_generate": "rows_per_generate",
    "coco_root": "dataset_root", "images_per_concept": "max_images",
}
#: old TOML spellings (accepted for one release, with a deprecation warning) -> the key to use instead
_OLD_KEYS = {"dataset_root": "coco_root", "max_images": "images_per_concept"}
_LIST_KEYS = ("concepts", "methods", "sets")
_TABLE_KEYS = ("metrics", "selection", "baselines", "budget_per_concept")
_NUMBER_LIST_KEYS = ("budgets",)
_METRIC_KEYS = ("names", "bertscore_model", "bertscore_layers", "device", "batch_size")
_SELECTION_KEYS = ("stage1", "stage2", "aggregate", "min_share", "reduce", "stage2_pool", "specific",
                   "exclude_massive")


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


def _top_level_kwargs(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """EvalConfig keyword arguments of the top-level keys (tables are checked to be tables, read elsewhere)."""
    known = sorted([*_SCALAR_KEYS, *_LIST_KEYS, *_TABLE_KEYS, *_NUMBER_LIST_KEYS])
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SCALAR_KEYS:
            field_name = _SCALAR_KEYS[key]
            if key in _OLD_KEYS:
                logger.warning("%s: the key %s is deprecated; use %s (the old key goes in the next release)",
                               source, key, _OLD_KEYS[key])
            if field_name in kwargs and kwargs[field_name] != value:
                raise KneuronError(f"{source}: give one of {_OLD_KEYS.get(key, key)} and its old spelling, not both")
            kwargs[field_name] = value
        elif key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise KneuronError(f"{source}: {key} must be a list of strings, got {value!r}")
            kwargs[key] = tuple(value)
        elif key in _NUMBER_LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise KneuronError(f"{source}: {key} must be a list of whole numbers, got {value!r}")
            kwargs[key] = tuple(value)
        elif key in _TABLE_KEYS:
            if not isinstance(value, dict):
                raise KneuronError(f"{source}: [{key}] must be a table, got {value!r}")
        else:
            raise KneuronError(f"{source}: unknown key {key!r} (known: {', '.join(known)})")
    for key, expected in (("run_id", str), ("eval_id", str), ("model", str), ("device", str), ("dtype", str),
                          ("ablation", str),
                          ("dataset_root", str), ("dataset_split", str)):
        if key in kwargs and not isinstance(kwargs[key], expected):
            raise KneuronError(f"{source}: {key} must be a string, got {kwargs[key]!r}")
    for key in ("budget", "n_other", "max_images", "batch_size", "max_new_tokens", "seed", "fragility_images",
                "reference_images", "rows_per_generate"):
        if key in kwargs and isinstance(kwargs[key], (float, bool)):
            raise KneuronError(f"{source}: {key} must be a whole number, got {kwargs[key]!r}")
    return kwargs


def _metrics_kwargs(metrics: dict[str, Any], source: str) -> dict[str, Any]:
    """EvalConfig keyword arguments of the ``[metrics]`` table: ``metrics`` (names) and ``metric_config``."""
    kwargs: dict[str, Any] = {}
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
    return kwargs


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> EvalConfig:
    """An `EvalConfig` from the TOML structure (see `load_config`); unknown keys and wrong types are errors."""
    kwargs = _top_level_kwargs(data, source)
    if "metrics" in data:
        kwargs.update(_metrics_kwargs(dict(data["metrics"]), source))
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


__all__ = ["ABLATIONS", "DEFAULT_METHODS", "REFERENCE_METHOD", "SAME_AS_REFERENCE", "EvalConfig", "config_from_dict",
           "jsonable", "load_config"]
