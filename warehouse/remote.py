"""Reading a warehouse given as a URI that pyarrow's file systems understand: ``file:///data/wh``,
``s3://bucket/wh``, ``gs://bucket/wh``, ``hdfs://...`` (`pyarrow.fs.FileSystem.from_uri`).

    con = kneuron.warehouse.connect("s3://bucket/kneuron-warehouse")    # DuckDB views, as over a local directory
    open_warehouse("gs://bucket/wh").read("samples")

What works: everything that reads — `open_warehouse` (reader), `read`, `finished_pairs`, `connect` and so
``kneuron sql``, ``ls``, ``report`` and the reading half of ``select``. The DuckDB views scan the committed files
as Arrow datasets through the same file system (projection and filter pushdown, so a query of one run reads its
row groups only); the commit records are read first, so only committed files are ever seen.

What does not: writing. The warehouse's atomicity rests on renames (files, then the commit record) and on a
file lock for the single writer; object stores have neither (a "rename" is copy + delete, and there is no
lock). A writer on a URI is therefore refused with a one-line error — except ``file://``, a local directory,
which is opened as one. Write locally and copy the finished warehouse up (``aws s3 sync``, ``gsutil rsync``:
copy the Parquet files first and ``_manifest/`` last, so a reader never meets a record whose files are not
there yet); readers on the object store then see every batch whose record arrived. Credentials and regions come
from the environment, as pyarrow reads them. Only ``file://`` is tested here.
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.errors import damaged_file_error, first_line, missing_file_error
from kneuron.warehouse.layout import MANIFEST_DIR, MARKER_FILE
from kneuron.warehouse.manifest import RELIST_TRIES, BatchRecord, FileRecord, live_records
from kneuron.warehouse.schema import TABLES, TableSpec
from kneuron.warehouse.store import Warehouse, check_marker
from kneuron.warehouse.views import view_sql


def open_uri(uri: str, *, create: bool) -> Warehouse:
    """The warehouse at ``uri``: a reader through pyarrow's file system, or (``create``) the writer of a
    ``file://`` directory; a writer elsewhere is a one-line `KneuronError` (see the module docstring)."""
    if create:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return Warehouse.open(unquote(parsed.path), create=True)
        raise KneuronError(f"warehouse {uri} is on object storage, which kneuron reads but does not write (no atomic "
                           "rename, no lock): write to a local directory, then copy it there (Parquet files first, "
                           "_manifest/ last)")
    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise KneuronError(f"cannot open warehouse {uri}: {first_line(exc)}") from None
    reader = RemoteWarehouse(uri, filesystem, base.rstrip("/"))
    reader.check_marker()
    reader.refresh()
    return reader


class RemoteWarehouse(Warehouse):
    """A read-only warehouse on a pyarrow file system (see the module docstring)."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem, base: str) -> None:
        super().__init__(Path(base or "/"), None)
        self.uri = uri
        self.filesystem = filesystem
        self.base = base

    def __repr__(self) -> str:
        return f"Warehouse({self.uri!r}, reader)"

    def location(self, relative: str) -> str:
        """The file system path of ``relative`` (``/``-separated, below the warehouse root)."""
        return posixpath.join(self.base, relative) if self.base else relative

    def check_marker(self) -> None:
        """`KneuronError` unless the URI holds a kneuron warehouse of this schema version."""
        try:
            with self.filesystem.open_input_stream(self.location(MARKER_FILE)) as stream:
                text = stream.read().decode("utf-8")
        except FileNotFoundError:
            raise KneuronError(f"no kneuron warehouse at {self.uri} (no {MARKER_FILE})") from None
        except (OSError, pa.ArrowException) as exc:
            raise KneuronError(f"cannot read warehouse {self.uri}: {first_line(exc)}") from None
        check_marker(self.uri, text)

    def refresh(self) -> None:
        """Read the commit records (again); a record that vanishes while listed makes the listing start over."""
        for _ in range(RELIST_TRIES):
            try:
                records = self._read_records()
                break
            except FileNotFoundError:
                continue
        else:
            raise KneuronError(f"the commit records of warehouse {self.uri} keep changing while being read")
        live, _ = live_records(records)
        self._records = {}
        self._keys = {name: set() for name in TABLES}
        for batch_id in sorted(live):
            self._register(live[batch_id])

    def _read_records(self) -> dict[str, BatchRecord]:
        selector = pafs.FileSelector(self.location(MANIFEST_DIR), allow_not_found=True)
        records: dict[str, BatchRecord] = {}
        for info in sorted(self.filesystem.get_file_info(selector), key=lambda i: i.base_name):
            name = info.base_name
            if not name.endswith(".json") or name.startswith("."):
                continue
            with self.filesystem.open_input_stream(info.path) as stream:  # FileNotFoundError: relist
                text = stream.read().decode("utf-8")
            try:
                record = BatchRecord.from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                raise KneuronError(f"damaged warehouse commit record {self.uri}/{MANIFEST_DIR}/{name}: {exc}") from None
            records[record.batch_id] = record
        return records

    def file_problem(self, batch_id: str, entry: FileRecord) -> KneuronError | None:
        """The cheap check of one committed file (exists, has its recorded size)."""
        location = self.location(entry.path)
        try:
            info = self.filesystem.get_file_info(location)
        except (OSError, pa.ArrowException) as exc:
            return damaged_file_error(Path(location), entry.table, batch_id, f"cannot stat it: {first_line(exc)}")
        if info.type == pafs.FileType.NotFound:
            return missing_file_error(Path(location), entry.table, batch_id)
        if info.size != entry.bytes:
            return damaged_file_error(Path(location), entry.table, batch_id,
                                      f"{info.size} bytes, its commit record says {entry.bytes}")
        return None

    def _read_file(self, batch_id: str, entry: FileRecord, columns: list[str] | None) -> pa.Table:
        problem = self.file_problem(batch_id, entry)
        if problem is not None:
            raise problem
        try:
            with self.filesystem.open_input_file(self.location(entry.path)) as handle:
                return pq.ParquetFile(handle).read(columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise damaged_file_error(Path(self.location(entry.path)), entry.table, batch_id,
                                     f"unreadable: {first_line(exc)}") from None


def register_views(con: duckdb.DuckDBPyConnection, wh: RemoteWarehouse,
                   views: list[tuple[str, TableSpec, list[FileRecord]]]) -> None:
    """Create each view ``(name, spec, files)`` on ``con`` over the files as a pyarrow dataset of ``wh``'s file
    system (``samples``, whose view keeps the latest row per key, is read into memory with its file order)."""
    for name, spec, files in views:
        if not files:
            con.execute(view_sql(spec, [], name))
            continue
        relation = f"_kneuron_arrow_{name}"
        if spec.supersedable is not None:
            con.register(relation, _ordered_rows(wh, spec, files))
        else:
            con.register(relation, ds.dataset([wh.location(e.path) for e in files], schema=_scannable(spec.schema),
                                              format="parquet", filesystem=wh.filesystem))
        con.execute(view_sql(spec, [], name, relation=relation))


def _scannable(schema: pa.Schema) -> pa.Schema:
    """``schema`` with float16 columns read as float32: DuckDB scans no Arrow float16 (from Parquet it reads
    them as FLOAT too, so the views are the same)."""
    return pa.schema([field.with_type(pa.float32()) if field.type == pa.float16() else field for field in schema])


def _ordered_rows(wh: RemoteWarehouse, spec: TableSpec, files: list[FileRecord]) -> pa.Table:
    """All rows of ``files`` plus ``_kneuron_file`` (position in commit order) and ``file_row_number``."""
    parts = []
    for position, entry in enumerate(files):
        with wh.filesystem.open_input_file(wh.location(entry.path)) as handle:
            table = pq.ParquetFile(handle).read().cast(_scannable(spec.schema))
        parts.append(table.append_column("_kneuron_file", pa.array([position] * table.num_rows, pa.int64()))
                     .append_column("file_row_number", pa.array(range(table.num_rows), pa.int64())))
    return pa.concat_tables(parts)

