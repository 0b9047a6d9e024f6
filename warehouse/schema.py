"""Schema v1 of the neuron warehouse: the one place that defines every table (one job: the table specs and
`conform`; it grows with each table).

Each table is a `TableSpec`: its Arrow schema (narrow types: int16 layer/unit ids, float16 per-neuron values),
the columns it is hive-partitioned by, the order its rows are written in, the allowed values of its enum-like
string columns and the key that may be committed only once. `conform` turns what a writer hands in (a pyarrow
table or a dict of numpy arrays / lists) into a table of exactly that schema, or raises `KneuronError`
naming the offending columns.

The DuckDB views (`kneuron.warehouse.connect`) expose the stored columns under the same names; DuckDB reads float16 as
FLOAT. The view of ``neuron_stats`` adds ``d_mean = o_mean - i_mean`` (FLOAT), which is not stored; the views of
``captions``, ``scores`` and ``neuron_sets`` add ``budget`` (the n of a ``method@n`` label, else NULL) and
``base_method`` (the label without ``@n``).

Schema v1 grows only by whole tables (``set_choices``, ``neuron_rollup``, ``mentions``, the ``evidence_*``
tables and ``ablation_means`` were added later) and by nullable columns appended to a table
(`ADDED_COLUMNS`): a warehouse written before a table existed has no files of it, and its view is simply
empty; a file written before a column existed reads as null in it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kneuron.engine.errors import KneuronError

SCHEMA_VERSION = 1
FORMAT_NAME = "kneuron-warehouse"

TIMESTAMP = pa.timestamp("us", tz="UTC")

# run ids become directory names and DuckDB hive partition values: keep them to a plain, portable alphabet.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def valid_run_id(text: str) -> bool:
    """Whether ``text`` can be a run id: 1-128 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit."""
    return isinstance(text, str) and RUN_ID_PATTERN.fullmatch(text) is not None


@dataclass(frozen=True)
class TableSpec:
    """How one warehouse table is stored.

    name: table (and view, and top-level directory) name.
    schema: the Arrow schema of its Parquet files; non-nullable fields must never hold nulls.
    partition_by: columns that become ``<column>=<value>`` directories (their values are also kept in the file).
    sort_by: row order within each file (ascending), e.g. (image_id, layer, unit) for neuron_stats.
    enums: allowed values of string columns (null is allowed only where the field is nullable).
    key: columns whose value combination may be committed by one batch only (empty: no such rule).
    key_per_row: the key is unique per row (one samples row per (run, concept, image)); otherwise many rows of
        one batch may share a key value (all neurons of one neuron set).
    supersedable: ``(column, value)``: a committed row whose ``column`` holds ``value`` may be followed by a later
        row with the same key (a ``skipped`` sample recorded again once its image is fixed); the view shows
        one row per key: any row without that value, else the latest. None: keys are never committed twice.
    unique_sorted: the rows of one file are unique on ``sort_by`` (within its partition): the writer refuses
        duplicates (``neuron_rollup``: one row per neuron, so a single file's rows are per-neuron totals).
    """

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]
    sort_by: tuple[str, ...] = ()
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    key: tuple[str, ...] = ()
    key_per_row: bool = False
    supersedable: tuple[str, str] | None = None
    unique_sorted: bool = False

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


def _col(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


_RUN = _col("run_id", pa.string())
_CONCEPT = _col("concept", pa.string())
_IMAGE = _col("image_id", pa.int64())
_LAYER = _col("layer", pa.int16())
_UNIT = _col("unit", pa.int16())

RUNS = TableSpec(
    name="runs",
    schema=pa.schema([
        _RUN,
        _col("created_at", TIMESTAMP),
        _col("model_name", pa.string()),
        _col("model_hash", pa.string()),
        _col("hook_site", pa.string()),
        _col("prompt", pa.string()),
        _col("positions", pa.string()),
        _col("n_positions", pa.int16()),
        _col("n_layers", pa.int16()),
        _col("d_ff", pa.int32()),
        _col("dtype", pa.string()),
        _col("inpainter", pa.string()),
        _col("config_json", pa.string()),
        _col("kneuron_version", pa.string()),
    ]),
    partition_by=("run_id",),
    enums={"positions": ("image", "prompt", "target")},
    key=("run_id",),
    key_per_row=True,
)

SPLITS = TableSpec(
    name="splits",
    schema=pa.schema([_RUN, _CONCEPT, _IMAGE, _col("split", pa.string())]),
    partition_by=("run_id", "concept"),
    sort_by=("image_id",),
    enums={"split": ("ident", "eval")},
)

SAMPLES = TableSpec(
    name="samples",
    schema=pa.schema([
        _RUN,
        _CONCEPT,
        _IMAGE,
        _col("file_name", pa.string()),
        _col("mask_area", pa.int32(), nullable=True),
        _col("mask_fraction", pa.float32(), nullable=True),
        _col("caption_original", pa.string(), nullable=True),
        _col("caption_inpainted", pa.string(), nullable=True),
        _col("target_token_id", pa.int32(), nullable=True),
        _col("target_source", pa.string(), nullable=True),
        _col("target_position", pa.int16(), nullable=True),
        _col("status", pa.string()),
        _col("skip_reason", pa.string(), nullable=True),
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("image_id",),
    enums={"target_source": ("caption", "prefix"), "status": ("ok", "skipped")},
    key=("run_id", "concept", "image_id"),
    key_per_row=True,
    supersedable=("status", "skipped"),
)

NEURON_STATS = TableSpec(
    name="neuron_stats",
    schema=pa.schema([
        _RUN,
        _CONCEPT,
        _IMAGE,
        _LAYER,
        _UNIT,
        _col("o_mean", pa.float16()),
        _col("i_mean", pa.float16()),
        _col("d_max", pa.float16()),
        _col("g_max", pa.float16()),
        _col("g_mean", pa.float16()),
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("image_id", "layer", "unit"),
)

TOKEN_STATS = TableSpec(
    name="token_stats",
    schema=pa.schema([
        _RUN,
        _CONCEPT,
        _IMAGE,
        _LAYER,
        _col("position", pa.int16()),
        _col("seq_position", pa.int16()),
        _col("rank", pa.int8()),
        _UNIT,
        _col("o_act", pa.float16()),
        _col("i_act", pa.float16()),
        _col("g", pa.float16()),
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("image_id", "layer", "position", "rank"),
)

NEURON_SETS = TableSpec(
    name="neuron_sets",
    schema=pa.schema([
        _col("set_id", pa.string()),
        _RUN,
        _CONCEPT,
        _col("method", pa.string()),
        _col("params_json", pa.string()),
        _LAYER,
        _UNIT,
        _col("score", pa.float32(), nullable=True),
        _col("created_at", TIMESTAMP),
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("set_id", "layer", "unit"),
    key=("set_id",),
)

CAPTIONS = TableSpec(
    name="captions",
    schema=pa.schema([
        _col("eval_id", pa.string()),
        _RUN,
        _col("set_id", pa.string(), nullable=True),
        _col("method", pa.string()),
        _CONCEPT,
        _col("group", pa.string()),
        _IMAGE,
        _col("condition", pa.string()),
        _col("text", pa.string()),
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("eval_id", "image_id"),
    enums={"group": ("target", "other"), "condition": ("unmodified", "suppressed")},
)

SCORES = TableSpec(
    name="scores",
    schema=pa.schema([
        _col("eval_id", pa.string()),
        _RUN,
        _col("set_id", pa.string(), nullable=True),
        _col("method", pa.string()),
        _CONCEPT,
        _col("group", pa.string()),
        _IMAGE,
        _col("metric", pa.string()),
        _col("reference", pa.string()),
        _col("value", pa.float32(), nullable=True),
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("eval_id", "image_id", "metric"),
    enums={"group": ("target", "other"), "reference": ("unmodified", "ground_truth")},
)

EVALS = TableSpec(
    name="evals",
    schema=pa.schema([_col("eval_id", pa.string()), _RUN, _col("created_at", TIMESTAMP),
                      _col("config_json", pa.string())]),
    partition_by=("run_id",),
    key=("eval_id",),
    key_per_row=True,
)

# One row per time a neuron set was made the current one of its (run, concept, method); the latest
# ``chosen_at`` wins. Rows are only ever added, so the history of choices stays queryable.
SET_CHOICES = TableSpec(
    name="set_choices",
    schema=pa.schema([
        _RUN,
        _CONCEPT,
        _col("method", pa.string()),
        _col("set_id", pa.string()),
        _col("chosen_at", TIMESTAMP),
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("chosen_at", "method", "set_id"),
)

# Per batch, per (run, concept, layer, unit): the number of images of the batch's neuron_stats rows and the sums
# of their (float16-stored) d_max, d_mean, g_max, g_mean (and |o_mean|), added up in float64 — exact for up to
# 4096 images per concept, since every float16 value (and every FLOAT d_mean of two of them) is a multiple of
# 2^-24 below 2^17.
# Written in the same batch as the neuron_stats rows it sums; summing it over batches gives the per-neuron means
# without reading the per-image rows (`kneuron.warehouse.rollup`).
NEURON_ROLLUP = TableSpec(
    name="neuron_rollup",
    schema=pa.schema([
        _RUN,
        _CONCEPT,
        _LAYER,
        _UNIT,
        _col("n_images", pa.int32()),
        _col("sum_d_max", pa.float64()),
        _col("sum_d_mean", pa.float64()),
        _col("sum_g_max", pa.float64()),
        _col("sum_g_mean", pa.float64()),
        _col("sum_abs_o_mean", pa.float64(), nullable=True),  # sum of |o_mean| (massive units); null: older file
    ]),
    partition_by=("run_id", "concept"),
    sort_by=("layer", "unit"),
    unique_sorted=True,
)

# The evidence of one suppression evaluation, written once by `kneuron suppress` when all its captions are in:
# whether each caption names each object of its image (the concept and the other annotated objects), and the
# intervals and paired tests of `kneuron.engine.eval.evidence` (``budget``: the n of a ``method@n`` label, else null).
_EVAL = _col("eval_id", pa.string())
_BUDGET = _col("budget", pa.int64(), nullable=True)
_CI = [_col(n, pa.float64(), nullable=True) for n in ("images_low", "images_high", "concepts_low", "concepts_high")]
MENTIONS = TableSpec(
    name="mentions",
    schema=pa.schema([_EVAL, _RUN, _col("set_id", pa.string(), nullable=True), _col("method", pa.string()), _BUDGET,
                      _CONCEPT, _col("group", pa.string()), _IMAGE, _col("condition", pa.string()),
                      _col("object", pa.string()), _col("is_concept", pa.bool_()), _col("mentioned", pa.bool_())]),
    partition_by=("run_id", "concept"),
    sort_by=("eval_id", "image_id", "method", "object"),
    enums={"group": ("target", "other"), "condition": ("unmodified", "suppressed")},
    key=("eval_id",),
)
EVIDENCE_INTERVALS = TableSpec(
    name="evidence_intervals",
    schema=pa.schema([_EVAL, _RUN, _col("method", pa.string()), _BUDGET, _col("group", pa.string()),
                      _col("measure", pa.string()), _col("reference", pa.string()),
                      _col("estimate", pa.float64(), nullable=True), *_CI, _col("n_images", pa.int64()),
                      _col("n_concepts", pa.int64()), _col("n_boot", pa.int64()), _col("seed", pa.int64())]),
    partition_by=("run_id",),
    sort_by=("eval_id", "method", "budget", "group", "measure"),
    key=("eval_id",),
)
EVIDENCE_PAIRED = TableSpec(
    name="evidence_paired",
    schema=pa.schema([_EVAL, _RUN, _col("method", pa.string()), _col("baseline", pa.string()), _BUDGET,
                      _col("group", pa.string()), _col("measure", pa.string()), _col("reference", pa.string()),
                      _col("difference", pa.float64(), nullable=True), *_CI,
                      _col("p_value", pa.float64(), nullable=True),
                      _col("p_holm", pa.float64(), nullable=True), _col("n_images", pa.int64()),
                      _col("n_concepts", pa.int64()), _col("n_perm", pa.int64()), _col("seed", pa.int64())]),
    partition_by=("run_id",),
    sort_by=("eval_id", "method", "baseline", "budget", "group", "measure"),
    key=("eval_id",),
)
EVIDENCE_GAPS = TableSpec(
    name="evidence_gaps",
    schema=pa.schema([_EVAL, _RUN, _col("method", pa.string()), _col("baseline", pa.string(), nullable=True), _BUDGET,
                      _col("quantity", pa.string()), _col("estimate", pa.float64(), nullable=True), *_CI,
                      _col("p_value", pa.float64(), nullable=True), _col("p_holm", pa.float64(), nullable=True),
                      _col("n_target_images", pa.int64()), _col("n_other_pairs", pa.int64()),
                      _col("n_concepts", pa.int64()), _col("n_boot", pa.int64()), _col("seed", pa.int64())]),
    partition_by=("run_id",),
    sort_by=("eval_id", "method", "baseline", "quantity", "budget"),
    enums={"quantity": ("gap", "area")},
    key=("eval_id",),
)
# Mean ablation (``kneuron suppress --ablation mean``): per evaluation, the value each unit is set to at each
# position kind (image / prompt / generated), the mean over the evaluation's reference identification images.
ABLATION_MEANS = TableSpec(
    name="ablation_means",
    schema=pa.schema([
        _col("eval_id", pa.string()),
        _RUN,
        _LAYER,
        _UNIT,
        _col("kind", pa.string()),
        _col("value", pa.float32()),
    ]),
    partition_by=("run_id",),
    sort_by=("eval_id", "layer", "unit", "kind"),
    enums={"kind": ("image", "prompt", "generated")},
)

# Nullable columns appended to a table after warehouses were written with it: files written before lack them,
# and every reader (DuckDB views, `conform`, compaction) sees null there.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {"neuron_rollup": ("sum_abs_o_mean",)}

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (RUNS, SPLITS, SAMPLES, NEURON_STATS, TOKEN_STATS, NEURON_SETS, CAPTIONS, SCORES, EVALS,
                 SET_CHOICES, NEURON_ROLLUP, MENTIONS, EVIDENCE_INTERVALS, EVIDENCE_PAIRED, EVIDENCE_GAPS,
                 ABLATION_MEANS)
}

# Columns the DuckDB view adds to a table: name -> (SQL expression over stored columns, DuckDB type).
# Storage plumbing, not analysis: d_mean is derived in the view from the stored float16 o_mean and i_mean, so
# no float16 value is stored twice and no file grows by a column. Analyses only read it from the view.
# The budget of a ``method@n`` label (`kneuron.engine.eval.budget.label`) and the method without it, so that queries
# filter on columns instead of parsing labels.
_LABEL_COLUMNS = {"budget": ("TRY_CAST(regexp_extract(method, '@([0-9]+)$', 1) AS BIGINT)", "BIGINT"),
                  "base_method": ("regexp_replace(method, '@[0-9]+$', '')", "VARCHAR")}
VIEW_EXTRA_COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "neuron_stats": {"d_mean": ("o_mean - i_mean", "FLOAT")},
    "captions": _LABEL_COLUMNS,
    "scores": _LABEL_COLUMNS,
    "neuron_sets": _LABEL_COLUMNS,
}


def spec_of(table: str) -> TableSpec:
    """The `TableSpec` of ``table``; `KneuronError` naming the known tables otherwise."""
    try:
        return TABLES[table]
    except KeyError:
        raise KneuronError(f"unknown warehouse table {table!r}; tables: {', '.join(TABLES)}") from None


def duckdb_type(type_: pa.DataType) -> str:
    """The DuckDB type a view exposes for an Arrow column type (float16 is read as FLOAT)."""
    if pa.types.is_string(type_):
        return "VARCHAR"
    if pa.types.is_timestamp(type_):
        return "TIMESTAMP WITH TIME ZONE" if type_.tz else "TIMESTAMP"
    names = {
        pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
        pa.float16(): "FLOAT", pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
    }
    if type_ in names:
        return names[type_]
    raise TypeError(f"no DuckDB type for Arrow type {type_}")


def _as_arrow(values: Any, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """An Arrow array of ``values`` (Arrow array, numpy array, list or scalar-free sequence), not yet cast."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"expected a 1-d array, got shape {values.shape}")
        if pa.types.is_floating(type_) and values.dtype.kind == "f":
            return pa.array(values.astype(type_.to_pandas_dtype(), copy=False))
        return pa.array(values)
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return pa.array(values)  # inferred (int64 / float64), then cast with overflow checks
    return pa.array(values, type=type_)


def conform(table: str, data: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> pa.Table:
    """``data`` as a table with exactly the schema of ``table`` (columns in schema order, types cast).

    data: a pyarrow Table/RecordBatch or a mapping column -> 1-d numpy array / Arrow array / list, all of one
    length. Nullable columns may be left out (they are filled with nulls). Raises `KneuronError` naming
    unknown columns, missing columns, columns that do not cast to their type (overflow, wrong kind), nulls in
    non-nullable columns, values outside an enum, ragged lengths and (samples) a ``skip_reason`` that does not
    match ``status``. Float columns are rounded to float16/float32 (values beyond float16 range become ±inf).
    """
    spec = spec_of(table)
    result = _cast_columns(table, spec, _given_columns(table, spec, data))
    _check_values(table, spec, result)
    return result


def _given_columns(table: str, spec: TableSpec, data: pa.Table | pa.RecordBatch | Mapping[str, Any]
                   ) -> dict[str, Any]:
    """`conform`'s input as column name -> values; unknown, missing or duplicate columns are errors."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        given: dict[str, Any] = {name: data.column(name) for name in data.column_names}
        if len(set(data.column_names)) != len(data.column_names):
            raise KneuronError(f"{table}: duplicate column names in {data.column_names}")
    elif isinstance(data, Mapping):
        given = dict(data)
    else:
        raise KneuronError(f"{table}: expected a pyarrow Table or a dict of arrays, got {type(data).__name__}")

    unknown = [name for name in given if name not in spec.schema.names]
    required = [f.name for f in spec.schema if not f.nullable]
    missing = [name for name in required if name not in given]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown columns {unknown}")
        if missing:
            parts.append(f"missing columns {missing}")
        raise KneuronError(f"{table}: {'; '.join(parts)} (expected {spec.columns})")
    return given


def _cast_columns(table: str, spec: TableSpec, given: dict[str, Any]) -> pa.Table:
    """The given columns cast to ``spec``'s types, in schema order, left-out nullable columns as nulls."""
    arrays: list[pa.Array | pa.ChunkedArray | None] = []
    lengths: dict[str, int] = {}
    for f in spec.schema:
        if f.name not in given:
            arrays.append(None)  # filled with nulls once the length is known
            continue
        try:
            array = _as_arrow(given[f.name], f.type).cast(f.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise KneuronError(f"{table}: column {f.name!r} does not fit type {f.type}: {first}") from None
        arrays.append(array)
        lengths[f.name] = len(array)
    if len(set(lengths.values())) > 1:
        raise KneuronError(f"{table}: columns have different lengths {lengths}")
    n_rows = next(iter(lengths.values()))
    filled = [pa.nulls(n_rows, f.type) if a is None else a for a, f in zip(arrays, spec.schema, strict=True)]
    return pa.Table.from_arrays(filled, schema=spec.schema)


def _check_values(table: str, spec: TableSpec, result: pa.Table) -> None:
    """Nulls in non-nullable columns, values outside an enum, and (samples) status vs skip_reason."""
    nulls = [f.name for f in spec.schema if not f.nullable and result.column(f.name).null_count]
    if nulls:
        raise KneuronError(f"{table}: nulls in non-nullable columns {nulls}")
    for name, allowed in spec.enums.items():
        column = result.column(name)
        # nulls pass here (is_in says False for them); non-nullable columns were checked for nulls above
        bad = pc.filter(column, pc.invert(pc.or_kleene(pc.is_in(column, value_set=pa.array(allowed)),
                                                       pc.is_null(column))))
        if len(bad):
            raise KneuronError(f"{table}: column {name!r} has value {bad[0].as_py()!r}; allowed: {list(allowed)}")
    if table == "samples":
        ok = pc.equal(result.column("status"), "ok")
        has_reason = pc.is_valid(result.column("skip_reason"))
        if pc.any(pc.equal(ok, has_reason)).as_py():
            raise KneuronError("samples: skip_reason must be null when status is 'ok' and set when 'skipped'")
