"""DuckDB over the warehouse: an in-memory connection with one view per table over the committed files.

    con = connect("kneuron-warehouse")
    con.sql("SELECT concept, count(*) FROM samples GROUP BY concept")

Views: ``runs``, ``splits``, ``samples``, ``neuron_stats`` (plus ``d_mean = o_mean - i_mean`` as FLOAT),
``token_stats``, ``neuron_sets``, ``captions``, ``scores``, ``evals``, ``set_choices``, ``neuron_rollup``, and
three views that split the per-neuron sums between the rollup and the image rows
(`kneuron.warehouse.rollup.rollup_split`):
``neuron_rollup_summed``, ``neuron_rollup_parts`` and ``neuron_stats_unrolled``. Each lists the
committed Parquet files explicitly, so files of uncommitted batches are never read; a table with no files
(also a table added to the schema after the warehouse was written) still has a view with the right columns and
types (float16 columns read as FLOAT). A committed file that is missing or not of its recorded size makes
`connect` raise a one-line `KneuronError` naming it and suggesting ``kneuron verify --repair`` (DuckDB would
fail every query of every view). The set of files is fixed when the connection is made: connect again to see
batches committed later. ``group`` is a column of ``captions`` and ``scores`` and an SQL keyword: write it as
``"group"``.

read_only=True (the default) means user SQL on the connection can read the views and nothing else on disk:
DuckDB's external access is switched off (it cannot be switched back on in that connection) with exactly the
committed files allowed, plus a private spill directory for large sorts/joins. ``COPY ... TO``, ``ATTACH``,
``read_csv('/any/file')``, ``INSTALL`` and changing those settings all fail. One gap remains inside DuckDB:
``COPY ... TO '<exact path of a committed file>' (USE_TMP_FILE false)`` is allowed by DuckDB's path list; the
writer makes committed files read-only (mode 0444), which stops that for every user except root.
read_only=False gives a plain in-memory DuckDB connection with the same views, for users who want to
``COPY`` results out or read other files next to the warehouse. `kneuron.warehouse.readonly.check_read_only_sql`
closes the remaining gap for user SQL: it lets only reading statements through.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import duckdb

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.digests import check_digests
from kneuron.warehouse.errors import first_line
from kneuron.warehouse.manifest import FileRecord
from kneuron.warehouse.rollup import ROLLUP_VIEWS, rollup_split
from kneuron.warehouse.schema import TABLES, VIEW_EXTRA_COLUMNS, TableSpec, duckdb_type, spec_of
from kneuron.warehouse.store import Warehouse


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(spec: TableSpec, files: list[str], name: str | None = None, relation: str | None = None) -> str:
    """``CREATE VIEW`` of ``spec`` over ``files`` (absolute paths), or over no rows when there are none.

    The files are read with hive partitioning (so DuckDB prunes files by run/concept) without type guessing
    (partition values stay VARCHAR); the stored columns hold the same values, so the view is exact either way.
    A table with ``spec.supersedable`` shows one row per key (see `TableSpec`); ``files`` are in commit order,
    and within a file (a compacted one holds the rows of many batches, `kneuron.warehouse.compact`) later rows are
    later. name: the view's name (default: the table's). relation: read this relation (a registered Arrow
    dataset, `kneuron.warehouse.remote`; a supersedable table's carries ``_kneuron_file`` and ``file_row_number``)
    instead of ``files``.
    """
    columns = ", ".join(_identifier(name) for name in spec.columns)
    extras = "".join(
        f", CAST({expression} AS {type_}) AS {_identifier(name)}"
        for name, (expression, type_) in VIEW_EXTRA_COLUMNS.get(spec.name, {}).items()
    )
    if relation is not None:
        source = _identifier(relation)
        if spec.supersedable is not None:
            column, value = spec.supersedable
            source = (f"(SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY "
                      f"{', '.join(_identifier(k) for k in spec.key)} ORDER BY ({_identifier(column)} = "
                      f"{_literal(value)}), _kneuron_file DESC, file_row_number DESC) = 1)")
    elif files:
        file_list = "[" + ", ".join(_literal(path) for path in files) + "]"
        if spec.supersedable is not None:  # one row per key: a non-superseded one, else the latest file's
            column, value = spec.supersedable
            source = (
                f"(SELECT * FROM read_parquet({file_list}, hive_partitioning = true, hive_types_autocast = false, "
                f"filename = '_kneuron_file', file_row_number = true) QUALIFY row_number() OVER (PARTITION BY "
                f"{', '.join(_identifier(k) for k in spec.key)} ORDER BY ({_identifier(column)} = {_literal(value)}), "
                f"list_position({file_list}, _kneuron_file) DESC, file_row_number DESC) = 1)"
            )
        else:
            source = f"read_parquet({file_list}, hive_partitioning = true, hive_types_autocast = false)"
    else:
        typed_nulls = ", ".join(
            f"CAST(NULL AS {duckdb_type(f.type)}) AS {_identifier(f.name)}" for f in spec.schema
        )
        source = f"(SELECT {typed_nulls} WHERE false)"
    return f"CREATE OR REPLACE VIEW {_identifier(name or spec.name)} AS SELECT {columns}{extras} FROM {source}"


def table_paths(root: str | os.PathLike[str] | Warehouse, table: str) -> list[str]:
    """Absolute paths of the committed Parquet files of ``table`` (in commit order), for raw access."""
    spec_of(table)
    warehouse = root if isinstance(root, Warehouse) else Warehouse.open(root)
    return [str(path) for path in warehouse.paths(table)]


def connect(root: str | os.PathLike[str] | Warehouse | None = None,
            read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per warehouse table (see the module docstring).

    root: warehouse directory (default `default_warehouse_path()`), or an open `Warehouse`.
    read_only: lock the connection down so that SQL can only read the warehouse's committed files.
    Raises `KneuronError` if ``root`` is not a warehouse of this schema version, or names the first committed
    file that is missing, not of its recorded size, or (first read of its current bytes) not of its sha256.
    """
    warehouse = root if isinstance(root, Warehouse) else Warehouse.open(root)
    warehouse.check_files()
    if warehouse.filesystem is None:  # each file's bytes against its record, once (`kneuron.warehouse.digests`)
        check_digests(warehouse.root, [(r.batch_id, e) for r in warehouse.batches for e in r.files])
    con = duckdb.connect(":memory:")
    allowed: list[str] = []
    try:
        if warehouse.filesystem is not None:  # a URI (object storage, file://): Arrow datasets, no local files
            from kneuron.warehouse.remote import RemoteWarehouse, register_views

            assert isinstance(warehouse, RemoteWarehouse)
            register_views(con, warehouse, _remote_views(warehouse))
            if read_only:
                _lock_down(con, [])
            return con
        for name, spec in TABLES.items():
            files = [str(path) for path in warehouse.paths(name)]
            allowed.extend(files)
            con.execute(view_sql(spec, files))
        for name, entries in rollup_split(warehouse.batches).items():  # where per-neuron sums come from
            con.execute(view_sql(spec_of(ROLLUP_VIEWS[name]), [str(warehouse.root / e.path) for e in entries], name))
    except duckdb.Error as exc:  # e.g. a file went away since the check: name it
        con.close()
        warehouse.check_files()
        raise KneuronError(f"cannot open the views of warehouse {warehouse.root}: {first_line(exc)}; "
                           "run `kneuron verify` to check its files") from None
    if read_only:
        _lock_down(con, allowed)
    return con


def _remote_views(warehouse: Warehouse) -> list[tuple[str, TableSpec, list[FileRecord]]]:
    """(view, spec, committed files) of every view `connect` makes, for a warehouse read from a URI."""
    records = warehouse.batches  # read once: a warehouse at a URI reads its commit records on every call
    views = [(name, spec, [entry for record in records for entry in record.files if entry.table == name])
             for name, spec in TABLES.items()]
    views += [(name, spec_of(ROLLUP_VIEWS[name]), files) for name, files in rollup_split(records).items()]
    return views


def _lock_down(con: duckdb.DuckDBPyConnection, readable_files: list[str]) -> None:
    """Switch off DuckDB's file access except ``readable_files`` and a private spill directory.

    DuckDB creates the spill directory only when a query spills and deletes it when the connection closes.
    """
    spill = Path(tempfile.gettempdir()) / f"kneuron-duckdb-{uuid.uuid4().hex}"
    con.execute("SET temp_directory = ?", [str(spill)])
    con.execute("SET allowed_paths = ?", [readable_files])
    con.execute("SET allowed_directories = ?", [[str(spill) + os.sep]])
    con.execute("SET enable_external_access = false")
