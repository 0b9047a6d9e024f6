"""One atomic batch of the warehouse writer: validate, sort and stage files, then commit or abort them whole.

    with kneuron.warehouse.batch() as b:                           # `Warehouse.batch` makes one (writer only)
        b.add("samples", {...})                            # validated, cast, sorted, written to temp files
    # leaving the block renames the files and writes _manifest/<batch_id>.json: now they are visible.

Each staged file is hashed while it is written (sha256 of exactly the bytes written) and its commit record
carries that checksum with its size and rows, and copies of the parent rows (runs, evals, neuron_sets) its rows
name from other batches (`kneuron.warehouse.parents`). A write that fails (full disk, read-only file system) removes
every file of the batch and is a one-line `KneuronError`; nothing of the batch is ever visible. The commit defers
SIGINT/SIGTERM/SIGHUP until it ends (`kneuron.warehouse.signals`), and once its record is published nothing it names is
removed.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.errors import write_error
from kneuron.warehouse.layout import ROW_GROUP_ROWS, data_file_name, parquet_options, partition_dir, temp_file_name
from kneuron.warehouse.manifest import BatchRecord, FileRecord, fsync_dir, write_record
from kneuron.warehouse.parents import PARENTS, encode_rows, references
from kneuron.warehouse.schema import TABLES, TableSpec, conform, spec_of, valid_run_id
from kneuron.warehouse.signals import deferred_signals, point


class BatchHost(Protocol):
    """What a batch needs from the warehouse it writes to (`kneuron.warehouse.store.Warehouse` is one)."""

    root: Path

    def run_ids(self) -> set[str]:
        """The committed runs."""

    def committed_keys(self, table: str) -> set[tuple[Any, ...]]:
        """The keys of ``table``'s committed rows."""

    def supersedable_keys(self, spec: TableSpec, keys: Iterable[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """The committed ``keys`` whose rows a batch may supersede."""

    def batch_closed(self, record: BatchRecord | None) -> None:
        """The open batch ended: committed as ``record``, or aborted/failed (None)."""

    def parent_copies(self, table: str, keys: Iterable[Any]) -> list[dict[str, Any]]:
        """JSON copies of the committed parent rows of ``table`` with these keys (for a commit record)."""

    def remember_parents(self, table: str, copies: Mapping[Any, list[dict[str, Any]]]) -> None:
        """Note copies of a just-committed batch's own parent rows, for the records of later batches."""


@dataclass
class _PendingFile:
    """A file of the batch: staged under ``temp`` until the commit renames it to ``final``; ``temp`` is None
    for a committed file the batch takes over unchanged (`Batch.keep`), which the batch never moves or deletes."""

    record: FileRecord
    temp: Path | None
    final: Path


class Batch:
    """The files of one unit of work; visible all together once committed, never in part.

    Use ``with kneuron.warehouse.batch() as b: b.add(table, data)``: leaving the block commits, an exception aborts.
    """

    def __init__(self, warehouse: BatchHost, batch_id: str) -> None:
        self.warehouse = warehouse
        self.batch_id = batch_id
        self.record: BatchRecord | None = None
        self.replaces: list[str] = []  # batches this one replaces when it commits (`kneuron.warehouse.compact`)
        self._pending: list[_PendingFile] = []
        self._keys: dict[str, set[tuple[Any, ...]]] = {name: set() for name in TABLES}
        self._refs: dict[str, set[Any]] = {parent: set() for parent in PARENTS}  # parent keys the rows name
        self._own_parents: dict[str, list[dict[str, Any]]] = {parent: [] for parent in PARENTS}
        self._state = "open"

    def __enter__(self) -> Batch:
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
        parts = [(values, _sorted(spec, part)) for values, part in _split_partitions(spec, rows)]
        if spec.unique_sorted:
            for values, part in parts:
                _check_unique(spec, values, part)
        for values, part in parts:
            try:
                written.append(self._write(spec, values, part))
            except OSError as exc:
                # a full disk or a read-only file system: the batch cannot commit; drop all of its files now
                failed = (self._pending[-1].temp if self._pending else None) or self.warehouse.root
                self.abort()
                raise write_error(self.warehouse.root, exc.filename or failed, exc) from None
        self._keys[table].update(new_keys)
        for parent, keys in references(table, rows).items():
            self._refs[parent].update(keys)
        if table in PARENTS:
            self._own_parents[table].extend(rows.to_pylist())
        return written

    def refer(self, table: str, keys: Iterable[Any]) -> None:
        """Note that the batch's rows name these keys of parent table ``table`` (`kneuron.warehouse.parents`): its
        commit
        record will carry copies of their rows. `add` notes them itself; `keep` and `write_parts` callers call this."""
        self._refs[table].update(keys)

    def _parent_copies(self) -> dict[str, list[dict[str, Any]]]:
        """JSON copies of the parent rows the batch's rows name that live in other batches (a batch removed whole
        takes its own parent rows and its record together, so copying those would not help), from the warehouse;
        a record with ``replaces`` (whose units of repair are files) copies every parent row it names."""
        copies: dict[str, list[dict[str, Any]]] = {}
        for parent, keys in self._refs.items():
            column = PARENTS[parent]
            own = [row for row in self._own_parents[parent] if row[column] in keys]
            missing = keys - {row[column] for row in own}
            rows = encode_rows(parent, own) if self.replaces else []
            rows += self.warehouse.parent_copies(parent, missing) if missing else []
            if rows:
                copies[parent] = sorted(rows, key=lambda row: str(row.get(column)))
        return copies

    def _remember_own_parents(self) -> None:
        """After the commit: the writer knows this batch's parent rows, for the copies of its later batches."""
        for parent, rows in self._own_parents.items():
            self.warehouse.remember_parents(parent, {key: encode_rows(parent, group)
                                                     for key, group in _grouped(rows, PARENTS[parent]).items()})

    def _check_run_ids(self, spec: TableSpec, rows: pa.Table) -> None:
        run_ids = pc.unique(rows.column("run_id")).to_pylist()
        for run_id in run_ids:
            if not valid_run_id(run_id):
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
            keys = list(zip(*(rows.column(name).to_pylist() for name in spec.key), strict=True))
            if len(set(keys)) != len(keys):
                duplicate = next(key for key, count in Counter(keys).items() if count > 1)
                raise KneuronError(f"{spec.name}: duplicate rows for {_describe(spec, duplicate)}")
            taken = self.warehouse.committed_keys(spec.name) | self._keys[spec.name]
        else:
            unique = rows.select(list(spec.key)).group_by(list(spec.key)).aggregate([])
            keys = list(zip(*(unique.column(name).to_pylist() for name in spec.key), strict=True))
            taken = self.warehouse.committed_keys(spec.name)
        clash = sorted(key for key in set(keys) if key in taken)
        if clash and spec.supersedable is not None and not any(key in self._keys[spec.name] for key in clash):
            clash = sorted(set(clash) - self.warehouse.supersedable_keys(spec, clash))
        if clash:
            where = "in the warehouse" if clash[0] in self.warehouse.committed_keys(spec.name) else "in this batch"
            raise KneuronError(f"{spec.name}: {_describe(spec, clash[0])} is already {where}")
        return set(keys)

    def _write(self, spec: TableSpec, values: dict[str, Any], rows: pa.Table) -> str:
        def write(target: _HashingWriter) -> int:
            pq.write_table(rows, target, row_group_size=ROW_GROUP_ROWS, **parquet_options(spec))
            return cast("int", rows.num_rows)

        return self._stage(spec, values, _file_keys(spec, rows), write)

    def write_parts(self, spec: TableSpec, values: dict[str, Any], parts: Iterable[pa.Table],
                    keys: list[list[Any]]) -> str:
        """Stage one file of ``spec`` in the partition ``values`` holding the rows of ``parts`` in their order
        (each already of the table's schema; read lazily, so a large merge never sits in memory whole), in row
        groups of up to `ROW_GROUP_ROWS`. ``keys``: the file's distinct key values for its commit record. No
        checks: `add` validates; `kneuron.warehouse.compact` passes rows read back from committed files."""
        def write(target: _HashingWriter) -> int:
            rows = 0
            with pq.ParquetWriter(target, spec.schema, **parquet_options(spec)) as writer:
                for group in _row_groups(parts):
                    writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
                    rows += group.num_rows
            return rows

        return self._stage(spec, values, keys, write)

    def _stage(self, spec: TableSpec, values: dict[str, Any], keys: list[list[Any]],
               write: Callable[[_HashingWriter], int]) -> str:
        """Write one file of the batch under its temp name with ``write`` (returns the rows written), fsync it,
        make it read-only and note its size and sha256; returns its final path relative to the root."""
        root = self.warehouse.root
        seq = len(self._pending)
        directory = partition_dir(spec, values)
        relative = f"{directory}/{data_file_name(self.batch_id, seq)}"
        temp = root / directory / temp_file_name(self.batch_id, seq)
        temp.parent.mkdir(parents=True, exist_ok=True)
        pending = _PendingFile(
            record=FileRecord(table=spec.name, path=relative, rows=0, bytes=0, partition=dict(values), keys=keys),
            temp=temp,
            final=root / relative,
        )
        self._pending.append(pending)  # before writing, so that an abort also removes a half-written file
        with open(temp, "wb") as handle:
            hashing = _HashingWriter(handle)
            rows = write(hashing)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o444)  # committed files are never modified; also keeps DuckDB COPY from overwriting them
        pending.record = replace(pending.record, rows=rows, bytes=hashing.size, sha256=hashing.hexdigest())
        return relative

    def keep(self, entry: FileRecord) -> None:
        """Take over a committed file unchanged (its record entry is copied; the file is never touched)."""
        if self._state != "open":
            raise KneuronError(f"batch {self.batch_id} is already {self._state}")
        self._pending.append(_PendingFile(record=entry, temp=None, final=self.warehouse.root / entry.path))

    # ------------------------------------------------------------------ commit / abort
    def commit(self) -> BatchRecord | None:
        """Rename the staged files to their final names, then write the commit record (which publishes them).

        A batch without rows commits nothing and returns None. If anything fails before the record is
        published, the batch's files are removed and the error propagates; the warehouse is as before the
        batch. Once the record is published nothing it names is removed, whatever happens after (a failed
        directory fsync, a signal). SIGINT/SIGTERM/SIGHUP arriving during the commit are delivered after it.
        """
        if self._state != "open":
            raise KneuronError(f"batch {self.batch_id} is already {self._state}")
        published: list[bool] = []
        record: BatchRecord | None = None
        with deferred_signals():
            try:
                if not self._pending:
                    self._state = "committed"
                    self.warehouse.batch_closed(None)
                    return None
                parents = self._parent_copies()
                staged = [(pending.temp, pending.final) for pending in self._pending if pending.temp is not None]
                for temp, final in staged:
                    point("rename", final)
                    os.replace(temp, final)
                for directory in sorted({final.parent for _, final in staged}):
                    fsync_dir(directory)
                record = BatchRecord(
                    batch_id=self.batch_id,
                    committed_at=datetime.now(timezone.utc).isoformat(),
                    files=[pending.record for pending in self._pending],
                    replaces=list(self.replaces),
                    parents=parents,
                )
                write_record(self.warehouse.root, record, published)
            except OSError as exc:
                if not published:
                    self._remove_files()
                    self._state = "aborted"
                    self.warehouse.batch_closed(None)
                    raise write_error(self.warehouse.root, exc.filename or self.warehouse.root, exc) from None
            except BaseException:
                if not published:
                    self._remove_files()
                    self._state = "aborted"
                    self.warehouse.batch_closed(None)
                    raise
            assert record is not None  # published: whatever happened after, the record stands
            self.warehouse.batch_closed(record)
            self._remember_own_parents()
            self.record = record
            self._state = "committed"
        return record

    def abort(self) -> None:
        """Delete the staged files; nothing of the batch becomes visible. Idempotent."""
        if self._state == "open":
            self._remove_files()
            self._state = "aborted"
            self.warehouse.batch_closed(None)

    def _remove_files(self) -> None:
        for pending in self._pending:
            if pending.temp is None:  # a kept committed file: not this batch's to delete
                continue
            for path in (pending.temp, pending.final):
                try:
                    point("unlink", path)
                    path.unlink()
                except FileNotFoundError:
                    pass



# ---------------------------------------------------------------------- helpers
class _HashingWriter(io.RawIOBase):
    """A write-only file object that passes bytes on to ``target`` and keeps their sha256 and count."""

    def __init__(self, target: io.BufferedWriter) -> None:
        super().__init__()
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Write ``data`` (bytes-like) to the target, hashing exactly what was written."""
        view = memoryview(data).cast("B")
        written = self._target.write(view)
        self._hash.update(view[:written])
        self.size += written
        return written

    def flush(self) -> None:
        self._target.flush()

    def hexdigest(self) -> str:
        """sha256 of everything written so far, as hex."""
        return self._hash.hexdigest()

def _row_groups(parts: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """``parts`` regrouped into tables of `ROW_GROUP_ROWS` rows (the last one shorter), in order."""
    buffered: list[pa.Table] = []
    count = 0
    for part in parts:
        if not part.num_rows:
            continue
        buffered.append(part)
        count += part.num_rows
        while count >= ROW_GROUP_ROWS:
            table = pa.concat_tables(buffered)
            yield table.slice(0, ROW_GROUP_ROWS)
            rest = table.slice(ROW_GROUP_ROWS)
            buffered, count = ([rest] if rest.num_rows else []), rest.num_rows
    if buffered:
        yield pa.concat_tables(buffered)


def _check_unique(spec: TableSpec, values: dict[str, Any], rows: pa.Table) -> None:
    """`KneuronError` naming the first repeated ``sort_by`` value of ``rows`` (sorted) in one partition."""
    columns = [rows.column(name).to_numpy() for name in spec.sort_by]
    if len(columns[0]) < 2:
        return
    same = np.ones(len(columns[0]) - 1, dtype=bool)
    for column in columns:
        same &= column[1:] == column[:-1]
    if same.any():
        k = int(np.argmax(same))
        where = ", ".join(f"{name} {column[k]}" for name, column in zip(spec.sort_by, columns, strict=True))
        raise KneuronError(f"{spec.name}: two rows for {where} in {values}; its rows are one per neuron")


def _grouped(rows: list[dict[str, Any]], column: str) -> dict[Any, list[dict[str, Any]]]:
    """``rows`` grouped by their ``column`` value, in order."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[column], []).append(row)
    return groups


def _describe(spec: TableSpec, key: tuple[Any, ...]) -> str:
    return ", ".join(f"{name} {value!r}" for name, value in zip(spec.key, key, strict=True))


def _file_keys(spec: TableSpec, rows: pa.Table) -> list[list[Any]]:
    """Distinct key values of ``rows`` (for the commit record), sorted."""
    if not spec.key:
        return []
    unique = rows.select(list(spec.key)).group_by(list(spec.key)).aggregate([])
    return sorted([list(key) for key in zip(*(unique.column(name).to_pylist() for name in spec.key), strict=True)])


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
    if all(pa.types.is_integer(column.type) for column in columns) and _is_sorted([c.to_numpy() for c in columns]):
        return rows
    return rows.sort_by([(name, "ascending") for name in spec.sort_by])
