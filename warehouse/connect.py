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
from kneuron.warehouse.opening import open_warehouse
from kneuron.warehouse.rollup import ROLLUP_VIEWS, rollup_split
from kneuron.warehouse.schema import TABLES, TableSpec, spec_of
from kneuron.warehouse.store import Warehouse
from kneuron.warehouse.views import view_sql


def table_paths(root: str | os.PathLike[str] | Warehouse, table: str) -> list[str]:
    """Absolute paths of the committed Parquet files of ``table`` (in commit order), for raw access."""
    spec_of(table)
    warehouse = root if isinstance(root, Warehouse) else open_warehouse(root)
    return [str(path) for path in warehouse.paths(table)]


def connect(root: str | os.PathLike[str] | Warehouse | None = None,
            read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per warehouse table (see the module docstring).

    root: warehouse directory (default `default_warehouse_path()`), or an open `Warehouse`.
    read_only: lock the connection down so that SQL can only read the warehouse's committed files.
    Raises `KneuronError` if ``root`` is not a warehouse of this schema version, or names the first committed
    file that is missing, not of its recorded size, or (first read of its current bytes) not of its sha256.
    """
    warehouse = root if isinstance(root, Warehouse) else open_warehouse(root)
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
