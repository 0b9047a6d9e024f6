"""Two-stage knowledge-neuron selection and its single-stage baselines, run in DuckDB.

The definitions live in ``queries/two_stage.sql`` (header comment); this module only turns a
`SelectionConfig` into bound parameters, runs the query once for the two-stage sets and once per baseline,
shapes the result as ``neuron_sets`` rows (`set_rows`, the one builder of such rows); the select pipeline
(`kneuron.engine.pipelines.select`) stores them:

    set_id VARCHAR, run_id VARCHAR, concept VARCHAR, method VARCHAR, params_json VARCHAR,
    layer SMALLINT, unit SMALLINT, score FLOAT, created_at TIMESTAMP WITH TIME ZONE (UTC)

(the warehouse's schema, `warehouse.TABLES["neuron_sets"]`). ``score`` is the stage-2 aggregated
score for ``two_stage`` and ``stage2_only`` sets and the stage-1 score for ``stage1_only``.

Beyond the paper, both optional (off by default, and then every set id is as before):
- ``specific`` (`SpecificSpec`, ``kneuron select --specific``): a third filter, N_k ∩ S_k, stored as the
  method ``two_stage_specific`` next to the plain ``two_stage`` set (which stays the reference of the
  baselines); S_k is defined in ``two_stage.sql``.
- ``exclude_massive`` (a number k, ``kneuron select --exclude-massive K``): the run's massive units
  (`massive_units`, ``queries/massive_units.sql``) are taken out of the pool of every method of the
  selection; ``exclude_massive`` enters every set's params.

``set_id`` is the first 16 hex digits of the SHA-256 of (run, concept, method, params) with sorted keys, so
the same selection of the same run always gets the same id. ``params_json`` holds those params plus a
``resolved`` object (thresholds actually applied, number of images, |C_k|, |N_k|), which does not enter the id.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import duckdb
import pyarrow as pa

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.warehouse import TABLES

THRESHOLD_KINDS = ("absolute", "quantile", "budget", "auto", "none")
AGGREGATIONS = ("mean", "share")
REDUCTIONS = ("max", "mean")
STAGE2_POOLS = ("candidates", "all")
METHODS = ("two_stage", "stage1_only", "stage2_only")
SPECIFIC_METHOD = "two_stage_specific"
SPECIFIC_KINDS = ("stage1", "ratio")
SPECIFIC_SCOPES = ("final", "pool")

NEURON_SETS_SCHEMA: pa.Schema = TABLES["neuron_sets"].schema

SUMMARY_SCHEMA = pa.schema(
    [
        ("concept", pa.string()),
        ("method", pa.string()),
        ("set_id", pa.string()),
        ("n_images", pa.int64()),
        ("n_neurons", pa.int64()),
        ("n_candidates", pa.int64()),
        ("n_selected", pa.int64()),
        ("n_specific", pa.int64()),
        ("threshold_a", pa.float64()),
        ("threshold_g", pa.float64()),
    ]
)


@dataclass(frozen=True)
class ThresholdSpec:
    """How one stage thresholds its aggregated scores (see ``two_stage.sql`` for the exact rules).

    kind: ``absolute`` (value = the threshold), ``quantile`` (value = q in [0, 1], per concept),
    ``budget`` (value = n, the top n per concept), ``auto`` (triangle/knee rule, no value) or ``none``.
    per_concept: (concept, value) pairs that replace ``value`` for those concepts (the paper's
    hand-set threshold_a^k / threshold_g^k).
    """

    kind: str = "auto"
    value: float | None = None
    per_concept: tuple[tuple[str, float], ...] | Mapping[str, float] = ()

    def __post_init__(self) -> None:
        if isinstance(self.per_concept, Mapping):
            object.__setattr__(self, "per_concept", tuple(sorted(self.per_concept.items())))
        if self.kind not in THRESHOLD_KINDS:
            raise KneuronError(f"unknown threshold kind {self.kind!r}; expected one of {', '.join(THRESHOLD_KINDS)}")
        values = [self.value] + [v for _, v in self.pairs]
        if self.kind in ("auto", "none"):
            if self.value is not None or self.per_concept:
                raise KneuronError(f"threshold kind {self.kind!r} takes no value (got {self.value!r})")
            return
        if self.value is None and not self.per_concept:
            raise KneuronError(f"threshold kind {self.kind!r} needs a value")
        for value in values:
            if value is None:
                continue
            if not math.isfinite(value):
                raise KneuronError(f"threshold value must be finite, got {value!r}")
            if self.kind == "quantile" and not 0.0 <= value <= 1.0:
                raise KneuronError(f"quantile threshold must lie in [0, 1], got {value!r}")
            if self.kind == "budget" and (value < 0 or value != int(value)):
                raise KneuronError(f"budget threshold must be a whole number >= 0, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> ThresholdSpec:
        """Parse the CLI form: ``auto``, ``none``, ``abs:V``, ``q:Q`` or ``top:N``."""
        text = text.strip()
        if text in ("auto", "none"):
            return cls(text)
        prefix, _, number = text.partition(":")
        kinds = {"abs": "absolute", "absolute": "absolute", "q": "quantile", "quantile": "quantile",
                 "top": "budget", "budget": "budget"}
        if prefix not in kinds or not number:
            raise KneuronError(f"bad threshold {text!r}; expected auto, abs:V, q:Q or top:N")
        try:
            value = float(number)
        except ValueError:
            raise KneuronError(f"bad threshold {text!r}: {number!r} is not a number") from None
        return cls(kinds[prefix], value)

    @property
    def pairs(self) -> tuple[tuple[str, float], ...]:
        """``per_concept`` as sorted (concept, value) pairs (a mapping given at construction is converted)."""
        return cast(tuple[tuple[str, float], ...], self.per_concept)

    def value_for(self, concept: str) -> float | None:
        """The value that applies to ``concept`` (its per-concept override, else ``value``)."""
        return dict(self.pairs).get(concept, self.value)

    def describe(self, concept: str) -> dict[str, Any]:
        """JSON-ready description for ``concept``: {"kind", "value"} (value omitted for auto/none)."""
        value = self.value_for(concept)
        if self.kind in ("auto", "none"):
            return {"kind": self.kind}
        if value is None:
            return {"kind": self.kind, "value": None}
        return {"kind": self.kind, "value": int(value) if self.kind == "budget" else float(value)}

    def bind(self, prefix: str) -> dict[str, Any]:
        """Query parameters ``{prefix}_kind``, ``{prefix}_value``, ``{prefix}_concepts``, ``{prefix}_values`` and
        ``{prefix}_budget_max`` (the largest budget of any concept, 0 unless the kind is ``budget``: two_stage.sql
        picks its top-n plan with it)."""
        budgets = [v for v in [self.value, *(v for _, v in self.pairs)] if v is not None]
        return {
            f"{prefix}_kind": self.kind,
            f"{prefix}_value": None if self.value is None else float(self.value),
            f"{prefix}_concepts": [c for c, _ in self.pairs],
            f"{prefix}_values": [float(v) for _, v in self.pairs],
            f"{prefix}_budget_max": int(max(budgets, default=0)) if self.kind == "budget" else 0,
        }


@dataclass(frozen=True)
class SpecificSpec:
    """Which neurons count as specific to their concept (S_k; the exact rules are in ``two_stage.sql``).

    kind ``stage1``: in C_k and in no other concept's C_c (the selection's own stage-1 thresholds, no new
    number). kind ``ratio``: s_k > 0 and s_k > ratio x the largest s_c of the other concepts, s = the mean
    stage-``stage`` score (``a``: activation difference, ``g``: GradCAM) over each concept's identification
    images; ratio 1 = "k is the concept the neuron scores highest on" (no tuned number).
    """

    kind: str = "stage1"
    stage: str = "g"
    ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SPECIFIC_KINDS:
            raise KneuronError(f"unknown specificity kind {self.kind!r}; expected one of {', '.join(SPECIFIC_KINDS)}")
        if self.stage not in ("a", "g"):
            raise KneuronError(f"specificity stage must be 'a' or 'g', got {self.stage!r}")
        if not math.isfinite(self.ratio) or self.ratio < 0:
            raise KneuronError(f"specificity ratio must be a finite number >= 0, got {self.ratio!r}")

    @classmethod
    def parse(cls, text: str) -> SpecificSpec:
        """The CLI form: ``stage1``, ``ratio:R`` (on g_c), ``ratio2:R`` (the same) or ``ratio1:R`` (on Δ)."""
        text = str(text).strip()
        if text == "stage1":
            return cls("stage1")
        prefix, _, number = text.partition(":")
        stages = {"ratio": "g", "ratio2": "g", "ratio1": "a"}
        if prefix not in stages or not number:
            raise KneuronError(f"bad specificity {text!r}; expected stage1, ratio:R, ratio1:R or ratio2:R")
        try:
            value = float(number)
        except ValueError:
            raise KneuronError(f"bad specificity {text!r}: {number!r} is not a number") from None
        return cls("ratio", stages[prefix], value)

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity (part of a set's params)."""
        if self.kind == "stage1":
            return {"kind": "stage1"}
        return {"kind": "ratio", "stage": self.stage, "ratio": float(self.ratio)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> SpecificSpec | None:
        """The spec a set's ``params["specific"]`` describes (None: no specificity filter)."""
        if not params:
            return None
        return cls(str(params.get("kind")), str(params.get("stage", "g")), float(params.get("ratio", 1.0)))


@dataclass(frozen=True)
class SelectionConfig:
    """One selection. The defaults are the defaults of ``kneuron select``.

    Defaults: per-image values max over positions (d_max, g_max), mean over images, stage 1 and stage 2 both
    by the triangle/knee rule on the positive mean scores, stage 2 over the candidates C_k. On a tiny model
    (4 layers x 256-512 units) this keeps the steep head of each sorted curve: a few dozen neurons per concept.
    """

    run_id: str | None = None  # None: the latest run
    concepts: tuple[str, ...] = ()  # empty: every concept of the run
    stage1: ThresholdSpec = field(default_factory=lambda: ThresholdSpec("auto"))
    stage2: ThresholdSpec = field(default_factory=lambda: ThresholdSpec("auto"))
    aggregate: str = "mean"
    min_share: float = 0.5
    reduce: str = "max"
    stage2_pool: str = "candidates"
    baselines: bool = True  # also stage1_only(|N_k|) and stage2_only(|N_k|)
    specific: SpecificSpec | None = None  # also two_stage_specific = N_k ∩ S_k
    exclude_massive: float | None = None  # k of queries/massive_units.sql: those units leave every pool

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATIONS:
            raise KneuronError(f"unknown aggregation {self.aggregate!r}; expected one of {', '.join(AGGREGATIONS)}")
        if self.reduce not in REDUCTIONS:
            raise KneuronError(f"unknown reduction {self.reduce!r}; expected one of {', '.join(REDUCTIONS)}")
        if self.stage2_pool not in STAGE2_POOLS:
            raise KneuronError(f"unknown stage-2 pool {self.stage2_pool!r}; expected one of {', '.join(STAGE2_POOLS)}")
        if not 0.0 <= self.min_share <= 1.0:
            raise KneuronError(f"min_share must lie in [0, 1], got {self.min_share!r}")
        if self.exclude_massive is not None and (not math.isfinite(self.exclude_massive)
                                                 or self.exclude_massive <= 0):
            raise KneuronError(f"exclude_massive must be a number k > 0, got {self.exclude_massive!r}")

    def common_params(self) -> dict[str, Any]:
        """Parameters every method shares (JSON-ready); ``exclude_massive`` only when set."""
        params: dict[str, Any] = {"aggregate": self.aggregate, "reduce": self.reduce}
        if self.aggregate == "share":
            params["min_share"] = self.min_share
        if self.exclude_massive is not None:
            params["exclude_massive"] = float(self.exclude_massive)
        return params


@dataclass
class Selection:
    """What one `run_selection` produced: the ``neuron_sets`` rows and one summary row per (concept, method)."""

    run_id: str
    neuron_sets: pa.Table  # NEURON_SETS_SCHEMA
    summary: pa.Table  # SUMMARY_SCHEMA


def set_id_of(run_id: str, concept: str, method: str, params: Mapping[str, Any]) -> str:
    """Deterministic id of a neuron set: 16 hex digits of SHA-256 over the sorted-key JSON of its identity."""
    identity = json.dumps({"run_id": run_id, "concept": concept, "method": method, "params": params},
                          sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]


def latest_run(con: duckdb.DuckDBPyConnection) -> str:
    """The id of the most recent run in the warehouse; `KneuronError` when there is none."""
    table = queries.run(con, "latest_run", {})
    if table.num_rows == 0:
        raise KneuronError("the warehouse has no runs: ingest one first (kneuron ingest)")
    return cast("str", table.column("run_id")[0].as_py())


def query_params(config: SelectionConfig, run_id: str, concepts: list[str] | tuple[str, ...],
                 stage1: ThresholdSpec, stage2: ThresholdSpec, specific: SpecificSpec | None = None,
                 scope: str = "final", excluded: Sequence[tuple[int, int]] = (),
                 keep_all: bool = False) -> dict[str, Any]:
    """The bound parameters of ``two_stage.sql``.

    specific / scope: the specificity filter S_k and where it applies (``final``: N_k ∩ S_k; ``pool``: the
    stage-2 pool is C_k ∩ S_k); None = off. excluded: ``(layer, unit)`` pairs taken out of every pool.
    keep_all (scope ``final``): return all of N_k, the rows outside S_k with ``specific`` FALSE (one pass for both).
    """
    if scope not in SPECIFIC_SCOPES:
        raise KneuronError(f"unknown specificity scope {scope!r}; expected one of {', '.join(SPECIFIC_SCOPES)}")
    return {
        "run_id": run_id,
        "concepts": list(concepts),
        "reduce": config.reduce,
        "aggregate": config.aggregate,
        "min_share": float(config.min_share),
        "g_pool": config.stage2_pool,
        **stage1.bind("a"),
        **stage2.bind("g"),
        "s_kind": "none" if specific is None else specific.kind,
        "s_stage": "g" if specific is None else specific.stage,
        "s_ratio": 1.0 if specific is None else float(specific.ratio),
        "s_scope": scope,
        "s_keep_all": bool(keep_all),
        "x_layers": [int(layer) for layer, _ in excluded],
        "x_units": [int(unit) for _, unit in excluded],
    }


#: the default k of the massive-unit rule (``queries/massive_units.sql``): an order of magnitude above the median
MASSIVE_K = 10.0


def massive_units(con: duckdb.DuckDBPyConnection, run_id: str, k: float = MASSIVE_K) -> list[tuple[int, int]]:
    """The run's massive units ``(layer, unit)`` (``queries/massive_units.sql`` with ``$k``), sorted."""
    rows = queries.run(con, "massive_units", {"run_id": run_id, "k": float(k)}).to_pydict()
    return sorted(zip((int(x) for x in rows["layer"]), (int(x) for x in rows["unit"]), strict=True))


def run_selection(con: duckdb.DuckDBPyConnection, config: SelectionConfig = SelectionConfig()) -> Selection:
    """Two-stage selection (and, if ``config.baselines``, the single-stage baselines at |N_k|) in DuckDB.

    ``con`` must expose the views ``neuron_stats``, ``samples``, ``splits`` (and ``runs`` when ``config.run_id``
    is None), as `kneuron.warehouse.connect` gives. Raises `KneuronError` for an unknown run or concept.
    """
    run_id = config.run_id if config.run_id is not None else latest_run(con)
    created_at = dt.datetime.now(dt.timezone.utc)
    excluded = massive_units(con, run_id, config.exclude_massive) if config.exclude_massive is not None else []
    # with --specific, one pass gives N_k and N_k ∩ S_k (the stages of a concept do not depend on the others)
    rows = queries.run(con, "two_stage", query_params(config, run_id, config.concepts, config.stage1, config.stage2,
                                                      config.specific, "final", excluded,
                                                      keep_all=config.specific is not None))
    _check_concepts(run_id, config.concepts, rows)
    if rows.num_rows == 0:
        raise KneuronError(f"no neuron_stats of ok images in run {run_id!r}")
    groups = _by_concept(rows)

    tables: list[pa.Table] = []
    summaries: list[dict[str, Any]] = []
    two_stage_ids: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for concept, both in groups:
        group = _all_of_n(both) if config.specific is not None else both
        params = {**config.common_params(), "stage1": config.stage1.describe(concept),
                  "stage2": config.stage2.describe(concept), "stage2_pool": config.stage2_pool}
        set_id = set_id_of(run_id, concept, "two_stage", params)
        two_stage_ids[concept] = set_id
        sizes[concept] = group["n_selected"]
        tables.append(_group_rows(run_id, concept, "two_stage", set_id, params, group, created_at))
        summaries.append(_summary_row(concept, "two_stage", set_id, group))

    if config.specific is not None:
        for concept, both in groups:
            group = _specific_of(both)
            params = {**config.common_params(), "stage1": config.stage1.describe(concept),
                      "stage2": config.stage2.describe(concept), "stage2_pool": config.stage2_pool,
                      "specific": config.specific.describe()}
            set_id = set_id_of(run_id, concept, SPECIFIC_METHOD, params)
            tables.append(_group_rows(run_id, concept, SPECIFIC_METHOD, set_id, params, group, created_at))
            summaries.append(_summary_row(concept, SPECIFIC_METHOD, set_id, group))

    if config.baselines:
        budgets = {concept: n for concept, n in sizes.items() if n > 0}
        for method in ("stage1_only", "stage2_only"):
            if not budgets:
                break
            budget = ThresholdSpec("budget", 0.0, tuple(budgets.items()))
            off = ThresholdSpec("none")
            stage1, stage2 = (budget, off) if method == "stage1_only" else (off, budget)
            base = queries.run(con, "two_stage",
                               query_params(config, run_id, sorted(budgets), stage1, stage2, excluded=excluded))
            for concept, group in _by_concept(base):
                params = {**config.common_params(), "budget": budgets[concept],
                          "budget_of": two_stage_ids[concept]}
                set_id = set_id_of(run_id, concept, method, params)
                tables.append(_group_rows(run_id, concept, method, set_id, params, group, created_at))
                summaries.append(_summary_row(concept, method, set_id, group))

    neuron_sets = pa.concat_tables(tables) if tables else NEURON_SETS_SCHEMA.empty_table()
    summary = pa.Table.from_pylist(summaries, schema=SUMMARY_SCHEMA)
    return Selection(run_id=run_id, neuron_sets=neuron_sets, summary=summary)


def select_neurons(con: duckdb.DuckDBPyConnection, config: SelectionConfig = SelectionConfig()) -> pa.Table:
    """The ``neuron_sets`` rows of `run_selection` (two-stage sets, then baselines), NEURON_SETS_SCHEMA."""
    return run_selection(con, config).neuron_sets


def _check_concepts(run_id: str, wanted: tuple[str, ...], rows: pa.Table) -> None:
    found = set(rows.column("concept").to_pylist())
    missing = [c for c in wanted if c not in found]
    if missing:
        raise KneuronError(f"unknown concept(s) or no ok images in run {run_id!r}: "
                           f"{', '.join(repr(c) for c in missing)}")


def _by_concept(rows: pa.Table) -> list[tuple[str, dict[str, Any]]]:
    """Split the query result by concept: summary fields plus the columns of the selected neurons."""
    data = rows.to_pydict()
    out: dict[str, dict[str, Any]] = {}
    for i, concept in enumerate(data["concept"]):
        group = out.get(concept)
        if group is None:
            group = {key: data[key][i] for key in ("n_images", "n_neurons", "n_candidates", "n_selected",
                                                   "n_specific", "threshold_a", "threshold_g")}
            group.update(layer=[], unit=[], score=[], specific=[])
            out[concept] = group
        if data["layer"][i] is not None:
            for key in ("layer", "unit", "score", "specific"):
                group[key].append(data[key][i])
    return sorted(out.items())


def _all_of_n(group: dict[str, Any]) -> dict[str, Any]:
    """The plain two-stage N_k of a one-pass group (``keep_all``): every row, counted, no specificity."""
    return {**group, "n_selected": len(group["layer"]), "n_specific": group["n_candidates"]}


def _specific_of(group: dict[str, Any]) -> dict[str, Any]:
    """N_k ∩ S_k of a one-pass group (``keep_all``): the rows flagged specific."""
    keep = [i for i, flag in enumerate(group["specific"]) if flag]
    return {**group, **{key: [group[key][i] for i in keep] for key in ("layer", "unit", "score", "specific")},
            "n_selected": len(keep)}


def set_rows(run_id: str, concept: str, method: str, set_id: str, params: Mapping[str, Any],
             neurons: Sequence[tuple[int, int, float | None]], created_at: dt.datetime,
             resolved: Mapping[str, Any]) -> pa.Table:
    """The ``neuron_sets`` rows of one set, one per neuron ``(layer, unit, score or None)``, NEURON_SETS_SCHEMA.

    ``params_json`` is ``params`` plus ``resolved`` (facts of this selection that do not enter the set id).
    The only place ``neuron_sets`` rows are built: selection here, baselines in the suppression pipeline.
    """
    params_json = json.dumps({**params, "resolved": dict(resolved)}, sort_keys=True, separators=(",", ":"))
    n = len(neurons)
    return pa.table(
        {
            "set_id": [set_id] * n,
            "run_id": [run_id] * n,
            "concept": [concept] * n,
            "method": [method] * n,
            "params_json": [params_json] * n,
            "layer": [int(layer) for layer, _, _ in neurons],
            "unit": [int(unit) for _, unit, _ in neurons],
            "score": [None if score is None else float(score) for _, _, score in neurons],
            "created_at": [created_at] * n,
        },
        schema=NEURON_SETS_SCHEMA,
    )


def _group_rows(run_id: str, concept: str, method: str, set_id: str, params: dict[str, Any],
                group: dict[str, Any], created_at: dt.datetime) -> pa.Table:
    resolved = {key: group[key] for key in ("n_images", "n_candidates", "n_selected", "threshold_a", "threshold_g")}
    if method == SPECIFIC_METHOD:
        resolved["n_specific"] = group["n_specific"]
    return set_rows(run_id, concept, method, set_id, params,
                    list(zip(group["layer"], group["unit"], group["score"], strict=True)), created_at, resolved)


def _summary_row(concept: str, method: str, set_id: str, group: dict[str, Any]) -> dict[str, Any]:
    return {"concept": concept, "method": method, "set_id": set_id,
            **{key: group[key] for key in ("n_images", "n_neurons", "n_candidates", "n_selected",
                                           "n_specific", "threshold_a", "threshold_g")}}
