"""The warehouse on disk: open or create it, write atomic batches as the single writer, read what is committed.

    with Warehouse.open(path, create=True) as wh:          # writer: takes the lock, collects garbage
        with wh.batch() as b:                              # one unit of work
            b.add("samples", {...})                        # validated, cast, sorted, written to temp files
            b.add("neuron_stats", arrow_table)
        # leaving the block renames the files and writes _manifest/<batch_id>.json: now they are visible.
        # An exception inside the block deletes the batch's files; nothing of it is ever visible.

    wh = Warehouse.open(path)                              # reader: no lock, sees committed batches only
    wh.finished_pairs(run_id)                              # {(concept, image_id)} with a committed samples row

Integrity rules the writer enforces (each violation is a one-line `KneuronError`):
- rows of a table other than ``runs`` must name a run whose ``runs`` row is committed or in the same batch;
- a key is committed once: one ``runs`` row per run, one ``evals`` row per eval, one ``samples`` row per
  (run, concept, image) — which is what lets an interrupted ingest resume without duplicates — and a
  ``set_id`` of ``neuron_sets`` belongs to one batch.
"""
from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.errors import KneuronError
from warehouse.layout import (
    DATA_FILE,
    DEFAULT_PATH,
    ENV_VAR,
    LOCK_FILE,
    MANIFEST_DIR,
    MARKER_FILE,
    ROW_GROUP_ROWS,
    TEMP_FILE,
    data_file_name,
    parquet_options,
    partition_dir,
    temp_file_name,
)
from warehouse.lock import WriterLock
from warehouse.manifest import BatchRecord, FileRecord, fsync_dir, read_records, write_record
from warehouse.schema import FORMAT_NAME, RUN_ID_PATTERN, SCHEMA_VERSION, TABLES, TableSpec, conform, spec_of


def default_warehouse_path() -> Path:
    """``$KNEURON_WAREHOUSE`` if set, else ``./kneuron-warehouse``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


def new_batch_id() -> str:
    """A batch id that sorts by commit start time: ``20250101T120000123456Z-<8 hex>``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"


def _marker_text() -> str:
    return json.dumps({"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION}, indent=2) + "\n"


def _check_marker(root: Path) -> None:
    """Raise `KneuronError` unless ``root/warehouse.json`` names this format and schema version."""
    marker = root / MARKER_FILE
    try:
        raw = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KneuronError(f"{marker} is not a readable warehouse marker: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        found = raw.get("format") if isinstance(raw, dict) else raw
        raise KneuronError(f"{root} is not a kneuron warehouse ({MARKER_FILE} has format {found!r})")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise KneuronError(
            f"warehouse {root} has schema_version {raw.get('schema_version')!r}; "
            f"this kneuron reads schema_version {SCHEMA_VERSION}"
        )


def _check_can_host(root: Path) -> None:
    """Raise `KneuronError` when ``root`` exists but cannot become (or already be) a warehouse."""
    if not root.exists():
        return
    if not root.is_dir():
        raise KneuronError(f"warehouse path {root} is a file, not a directory")
    if (root / MARKER_FILE).exists():
        return
    if any(entry.name != LOCK_FILE for entry in root.iterdir()):
        raise KneuronError(f"{root} is not empty and not a kneuron warehouse (no {MARKER_FILE})")


class Warehouse:
    """A warehouse directory; use `Warehouse.open`. A writer (``create=True``) holds the single-writer lock."""

    def __init__(self, root: Path, lock: WriterLock | None) -> None:
        self.root = root
        self._lock = lock
        self._records: dict[str, BatchRecord] = {}
        self._keys: dict[str, set[tuple[Any, ...]]] = {name: set() for name in TABLES}
        self._open_batch: Batch | None = None
        self.garbage_collected: list[Path] = []

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = False) -> "Warehouse":
        """Open the warehouse at ``path`` (default `default_warehouse_path()`).

        create=False: a reader. The warehouse must exist; no lock is taken; `batch` is refused.
        create=True: the writer. Creates the directory (and marker) if it is missing or empty, takes the
            exclusive writer lock (`KneuronError` naming the holder's pid if another writer has it), then
            deletes the files of batches that never committed (crash, kill -9).
        Errors (`KneuronError`): missing warehouse (reader), non-empty directory that is not a warehouse,
        other format or schema version.
        """
        root = Path(path if path is not None else default_warehouse_path()).expanduser().absolute()
        if not create:
            if not root.exists():
                raise KneuronError(f"no kneuron warehouse at {root} (no such directory)")
            if not root.is_dir():
                raise KneuronError(f"warehouse path {root} is a file, not a directory")
            if not (root / MARKER_FILE).exists():
                if any(root.iterdir()):
                    raise KneuronError(f"{root} is not a kneuron warehouse (no {MARKER_FILE})")
                raise KneuronError(f"no kneuron warehouse at {root} (empty directory)")
            _check_marker(root)
            warehouse = cls(root, None)
            warehouse.refresh()
            return warehouse

        _check_can_host(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KneuronError(f"cannot create warehouse directory {root}: {exc.strerror}") from None
        lock = WriterLock(root, root / LOCK_FILE)
        lock.acquire()
        try:
            marker = root / MARKER_FILE
            if not marker.exists():
                _check_can_host(root)
                temp = root / f".{MARKER_FILE}.tmp"
                temp.write_text(_marker_text(), encoding="utf-8")
                os.replace(temp, marker)
                fsync_dir(root)
            _check_marker(root)
            warehouse = cls(root, lock)
            warehouse.refresh()
            warehouse._collect_garbage()
        except BaseException:
            lock.release()
            raise
        return warehouse

    @property
    def writable(self) -> bool:
        return self._lock is not None and self._lock.held

    def close(self) -> None:
        """Abort a batch left open, release the writer lock (a reader has nothing to release). Idempotent."""
        if self._open_batch is not None:
            self._open_batch.abort()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "Warehouse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Warehouse({str(self.root)!r}, {'writer' if self.writable else 'reader'})"

    # ------------------------------------------------------------------ committed state
    def refresh(self) -> None:
        """Pick up batches committed since the last look (a reader sees new commits of a running writer)."""
        records = read_records(self.root, self._records)
        for batch_id, record in records.items():
            if batch_id not in self._records:
                self._register(record)

    def _register(self, record: BatchRecord) -> None:
        self._records[record.batch_id] = record
        for entry in record.files:
            self._keys[entry.table].update(tuple(key) for key in entry.keys)

    @property
    def batches(self) -> list[BatchRecord]:
        """Commit records of all committed batches, oldest first."""
        if not self.writable:
            self.refresh()
        return [self._records[batch_id] for batch_id in sorted(self._records)]

    def committed_files(self, table: str, *, run_id: str | None = None,
                        concept: str | None = None) -> list[FileRecord]:
        """Committed files of ``table`` (optionally of one run / concept), in commit order."""
        spec_of(table)
        wanted = {key: value for key, value in (("run_id", run_id), ("concept", concept)) if value is not None}
        return [
            entry
            for record in self.batches
            for entry in record.files
            if entry.table == table and all(entry.partition.get(k) == v for k, v in wanted.items())
        ]

    def paths(self, table: str, **partition: str | None) -> list[Path]:
        """Absolute paths of the committed Parquet files of ``table`` (see `committed_files`)."""
        return [self.root / entry.path for entry in self.committed_files(table, **partition)]

    def read(self, table: str, *, run_id: str | None = None, concept: str | None = None,
             columns: list[str] | None = None) -> pa.Table:
        """The committed rows of ``table`` (optionally one run / concept) as one Arrow table of its schema."""
        spec = spec_of(table)
        parts = [pq.ParquetFile(path).read(columns=columns)
                 for path in self.paths(table, run_id=run_id, concept=concept)]
        if not parts:
            empty = spec.schema.empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables(parts)

    def runs(self) -> list[dict[str, Any]]:
        """The committed ``runs`` rows as dicts, oldest first."""
        rows = self.read("runs").to_pylist()
        return sorted(rows, key=lambda row: (row["created_at"], row["run_id"]))

    def run_ids(self) -> set[str]:
        """Ids of the committed runs."""
        if not self.writable:
            self.refresh()
        return {key[0] for key in self._keys["runs"]}

    def finished_pairs(self, run_id: str) -> set[tuple[str, int]]:
        """(concept, image_id) pairs of ``run_id`` that have a committed ``samples`` row (ok or skipped)."""
        if not self.writable:
            self.refresh()
        return {(concept, image_id) for run, concept, image_id in self._keys["samples"] if run == run_id}

    # ------------------------------------------------------------------ writing
    def batch(self, batch_id: str | None = None) -> "Batch":
        """A new atomic batch (use as a context manager). Only the writer may open one, one at a time."""
        if not self.writable:
            raise KneuronError(f"warehouse {self.root} is open read-only; open it with create=True to write")
        if self._open_batch is not None:
            raise KneuronError(f"warehouse {self.root} already has an open batch {self._open_batch.batch_id}")
        batch_id = batch_id or new_batch_id()
        if not DATA_FILE.fullmatch(data_file_name(batch_id, 0)) or batch_id in self._records:
            raise KneuronError(f"invalid or already used batch id {batch_id!r}")
        self._open_batch = Batch(self, batch_id)
        return self._open_batch

    def _collect_garbage(self) -> None:
        """Delete writer files that no commit record names (left by a crash), and directories left empty."""
        committed = {entry.path for record in self._records.values() for entry in record.files}
        removed: list[Path] = []
        for table in TABLES:
            table_dir = self.root / table
            if not table_dir.is_dir():
                continue
            for directory, subdirs, files in os.walk(table_dir, topdown=False):
                for name in files:
                    path = Path(directory) / name
                    relative = path.relative_to(self.root).as_posix()
                    if TEMP_FILE.fullmatch(name) or (DATA_FILE.fullmatch(name) and relative not in committed):
                        path.unlink()
                        removed.append(path)
                if Path(directory) != table_dir and not os.listdir(directory):
                    os.rmdir(directory)
        manifest_dir = self.root / MANIFEST_DIR
        if manifest_dir.is_dir():
            for path in manifest_dir.glob(".*.json.tmp"):
                path.unlink()
                removed.append(path)
        self.garbage_collected = removed


@dataclass
class _PendingFile:
    record: FileRecord
    temp: Path
    final: Path


class Batch:
    """The files of one unit of work; visible all together once committed, never in part.

    Use ``with warehouse.batch() as b: b.add(table, data)``: leaving the block commits, an exception aborts.
    """

    def __init__(self, warehouse: Warehouse, batch_id: str) -> None:
        self.warehouse = warehouse
        self.batch_id = batch_id
        self.record: BatchRecord | None = None
        self._pending: list[_PendingFile] = []
        self._keys: dict[str, set[tuple[Any, ...]]] = {name: set() for name in TABLES}
        self._state = "open"

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    # ------------------------------------------------------------------ adding data
    def add(self, table: str, data: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> list[str]:
        """Validate ``data`` against ``table``'s schema (see `schema.conform`) and stage it in temp files.

        Rows are split by partition (one file per partition), sorted by the table's sort key, and written
        with the table's Parquet encodings. Returns the paths (relative to the root) the files will have.
        """
        if self._state != "open":
            raise KneuronError(f"batch {self.batch_id} is already {self._state}")
        spec = spec_of(table)
        rows = conform(table, data)
        if rows.num_rows == 0:
            return []
        self._check_run_ids(spec, rows)
        new_keys = self._check_keys(spec, rows)
        written: list[str] = []
        for values, part in _split_partitions(spec, rows):
            written.append(self._write(spec, values, _sorted(spec, part)))
        self._keys[table].update(new_keys)
        return written

    def _check_run_ids(self, spec: TableSpec, rows: pa.Table) -> None:
        run_ids = pc.unique(rows.column("run_id")).to_pylist()
        for run_id in run_ids:
            if not RUN_ID_PATTERN.fullmatch(run_id):
                raise KneuronError(
                    f"{spec.name}: run_id {run_id!r} must be 1-128 of A-Z a-z 0-9 _ . - (starting alphanumeric)"
                )
        if spec.name == "runs":
            return
        known = self.warehouse.run_ids() | {key[0] for key in self._keys["runs"]}
        unknown = [run_id for run_id in run_ids if run_id not in known]
        if unknown:
            raise KneuronError(
                f"{spec.name}: run {unknown[0]!r} is not in the warehouse; add its runs row first "
                "(earlier or in this batch)"
            )

    def _check_keys(self, spec: TableSpec, rows: pa.Table) -> set[tuple[Any, ...]]:
        if not spec.key:
            return set()
        if spec.key_per_row:
            keys = list(zip(*(rows.column(name).to_pylist() for name in spec.key)))
            if len(set(keys)) != len(keys):
                duplicate = next(key for key, count in Counter(keys).items() if count > 1)
                raise KneuronError(f"{spec.name}: duplicate rows for {_describe(spec, duplicate)}")
            taken = self.warehouse._keys[spec.name] | self._keys[spec.name]
        else:
            unique = rows.select(list(spec.key)).group_by(list(spec.key)).aggregate([])
            keys = list(zip(*(unique.column(name).to_pylist() for name in spec.key)))
            taken = self.warehouse._keys[spec.name]
        clash = sorted(key for key in set(keys) if key in taken)
        if clash:
            where = "in the warehouse" if clash[0] in self.warehouse._keys[spec.name] else "in this batch"
            raise KneuronError(f"{spec.name}: {_describe(spec, clash[0])} is already {where}")
        return set(keys)

    def _write(self, spec: TableSpec, values: dict[str, Any], rows: pa.Table) -> str:
        root = self.warehouse.root
        seq = len(self._pending)
        directory = partition_dir(spec, values)
        relative = f"{directory}/{data_file_name(self.batch_id, seq)}"
        temp = root / directory / temp_file_name(self.batch_id, seq)
        temp.parent.mkdir(parents=True, exist_ok=True)
        pending = _PendingFile(
            record=FileRecord(table=spec.name, path=relative, rows=rows.num_rows, bytes=0,
                              partition=dict(values), keys=_file_keys(spec, rows)),
            temp=temp,
            final=root / relative,
        )
        self._pending.append(pending)  # before writing, so that an abort also removes a half-written file
        with open(temp, "wb") as handle:
            pq.write_table(rows, handle, row_group_size=ROW_GROUP_ROWS, **parquet_options(spec))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o444)  # committed files are never modified; also keeps DuckDB COPY from overwriting them
        pending.record = replace(pending.record, bytes=temp.stat().st_size)
        return relative

    # ------------------------------------------------------------------ commit / abort
    def commit(self) -> BatchRecord | None:
        """Rename the staged files to their final names, then write the commit record (which publishes them).

        A batch without rows commits nothing and returns None. If anything fails, the batch's files are
        removed and the error propagates; the warehouse is as before the batch.
        """
        if self._state != "open":
            raise KneuronError(f"batch {self.batch_id} is already {self._state}")
        try:
            if not self._pending:
                self._state = "committed"
                return None
            for pending in self._pending:
                os.replace(pending.temp, pending.final)
            for directory in sorted({pending.final.parent for pending in self._pending}):
                fsync_dir(directory)
            record = BatchRecord(
                batch_id=self.batch_id,
                committed_at=datetime.now(timezone.utc).isoformat(),
                files=[pending.record for pending in self._pending],
            )
            write_record(self.warehouse.root, record)
        except BaseException:
            self._remove_files()
            self._state = "aborted"
            raise
        finally:
            self.warehouse._open_batch = None
        self.warehouse._register(record)
        self.record = record
        self._state = "committed"
        return record

    def abort(self) -> None:
        """Delete the staged files; nothing of the batch becomes visible. Idempotent."""
        if self._state == "open":
            self._remove_files()
            self._state = "aborted"
            self.warehouse._open_batch = None

    def _remove_files(self) -> None:
        for pending in self._pending:
            for path in (pending.temp, pending.final):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass


# ---------------------------------------------------------------------- helpers
def _describe(spec: TableSpec, key: tuple[Any, ...]) -> str:
    return ", ".join(f"{name} {value!r}" for name, value in zip(spec.key, key))


def _file_keys(spec: TableSpec, rows: pa.Table) -> list[list[Any]]:
    """Distinct key values of ``rows`` (for the commit record), sorted."""
    if not spec.key:
        return []
    unique = rows.select(list(spec.key)).group_by(list(spec.key)).aggregate([])
    return sorted([list(key) for key in zip(*(unique.column(name).to_pylist() for name in spec.key))])


def _split_partitions(spec: TableSpec, rows: pa.Table) -> Iterator[tuple[dict[str, Any], pa.Table]]:
    """(partition values, rows) for each distinct combination of ``spec.partition_by``, in sorted order."""
    keys = list(spec.partition_by)
    combos = rows.select(keys).group_by(keys).aggregate([]).sort_by([(key, "ascending") for key in keys])
    if combos.num_rows == 1:
        yield combos.to_pylist()[0], rows
        return
    for values in combos.to_pylist():
        mask = None
        for key in keys:
            equal = pc.equal(rows.column(key), values[key])
            mask = equal if mask is None else pc.and_(mask, equal)
        yield values, rows.filter(mask)


def _is_sorted(columns: list[np.ndarray]) -> bool:
    """Whether rows are in ascending lexicographic order of ``columns`` (numpy arrays of equal length)."""
    if len(columns[0]) < 2:
        return True
    ordered = np.zeros(len(columns[0]) - 1, dtype=bool)  # strictly ordered by an earlier column
    tied = np.ones_like(ordered)                           # equal on all earlier columns
    for column in columns:
        before, after = column[:-1], column[1:]
        ordered |= tied & (after > before)
        tied &= after == before
    return bool(np.all(ordered | tied))


def _sorted(spec: TableSpec, rows: pa.Table) -> pa.Table:
    """``rows`` in the order of ``spec.sort_by`` (a no-copy check first: ingest usually hands them in order)."""
    if not spec.sort_by:
        return rows
    columns = [rows.column(name) for name in spec.sort_by]
    if all(pa.types.is_integer(column.type) for column in columns):
        if _is_sorted([column.to_numpy() for column in columns]):
            return rows
    return rows.sort_by([(name, "ascending") for name in spec.sort_by])
