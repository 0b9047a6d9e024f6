"""The warehouse on disk (one job: the directory handle: open or create it, write atomic batches as the single
writer, read what is committed).

    with Warehouse.open(path, create=True) as wh:          # writer: takes the lock, collects garbage
        with wh.batch() as b:                              # one unit of work
            b.add("samples", {...})                        # validated, cast, sorted, written to temp files
            b.add("neuron_stats", arrow_table)
        # leaving the block renames the files and writes _manifest/<batch_id>.json: now they are visible.
        # An exception inside the block deletes the batch's files; nothing of it is ever visible.

    wh = Warehouse.open(path)                              # reader: no lock, sees committed batches only
    wh.finished_pairs(run_id)                              # {(concept, image_id)} with a committed samples row
    wh.check_run_files(run_id)                             # cheap: the run's committed files exist, right size

Integrity rules the writer enforces (each violation is a one-line `KneuronError`):
- rows of a table other than ``runs`` must name a run whose ``runs`` row is committed or in the same batch;
- a key is committed once: one ``runs`` row per run, one ``evals`` row per eval, one ``samples`` row per
  (run, concept, image) — which is what lets an interrupted ingest resume without duplicates — and a
  ``set_id`` of ``neuron_sets`` belongs to one batch. One exception: a ``skipped`` samples row may be followed
  by a later row for the same pair (`TableSpec.supersedable`: the pair recorded again once its image is fixed;
  the view shows the later row, `read` returns both).

`Batch` (staging, checksums, commit) lives in `kneuron.warehouse.batch`; `Warehouse.batch` makes one.

Storage faults are one-line `KneuronError`s too (`kneuron.warehouse.errors`): a read-only warehouse (EROFS, EACCES on
the lock or any write), a full disk during a batch (its files are removed, nothing is committed), a committed
file that is missing or has the wrong size (run ``kneuron verify --repair``; see `kneuron.warehouse.verify`).
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.batch import Batch
from kneuron.warehouse.digests import check_digests
from kneuron.warehouse.errors import damaged_file_error, missing_file_error, write_error
from kneuron.warehouse.garbage import collect_garbage, delete_unreferenced
from kneuron.warehouse.layout import (
    DATA_FILE,
    DEFAULT_PATH,
    ENV_VAR,
    LOCK_FILE,
    MANIFEST_DIR,
    MARKER_FILE,
    data_file_name,
)
from kneuron.warehouse.lock import WriterLock
from kneuron.warehouse.manifest import BatchRecord, FileRecord, fsync_dir, live_records, read_records, remove_record
from kneuron.warehouse.parents import Copies, add_copies, add_read_rows, copies_in, pick
from kneuron.warehouse.schema import FORMAT_NAME, SCHEMA_VERSION, TABLES, TableSpec, spec_of
from kneuron.warehouse.signals import deferred_signals


def default_warehouse_path() -> Path:
    """``$KNEURON_WAREHOUSE`` if set, else ``./kneuron-warehouse``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


def new_batch_id() -> str:
    """A batch id that sorts by commit start time: ``20250101T120000123456Z-<8 hex>``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"


def _marker_text() -> str:
    return json.dumps({"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION}, indent=2) + "\n"


def check_marker(root: Path | str, text: str | None = None) -> None:
    """Raise `KneuronError` unless ``root/warehouse.json`` (or its ``text``, read by the caller: a warehouse on
    object storage) names this format and schema version."""
    marker = f"{root}/{MARKER_FILE}" if isinstance(root, str) else root / MARKER_FILE
    try:
        raw = json.loads(text if text is not None else Path(marker).read_text(encoding="utf-8"))
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


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URI with a scheme (``file:///w``, ``s3://bucket/w``), not a local path."""
    text = os.fspath(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


class Warehouse:
    """A warehouse directory; use `Warehouse.open`. A writer (``create=True``) holds the single-writer lock."""

    #: the pyarrow file system of a warehouse opened from a URI (`kneuron.warehouse.remote`); None: a local directory
    filesystem: Any = None

    def __init__(self, root: Path, lock: WriterLock | None) -> None:
        self.root = root
        self._lock = lock
        self._records: dict[str, BatchRecord] = {}
        self._keys: dict[str, set[tuple[Any, ...]]] = {name: set() for name in TABLES}
        self._replaced: dict[str, BatchRecord] = {}
        self._open_batch: Batch | None = None
        self.garbage_collected: list[Path] = []
        self._parent_cache: Copies = copies_in([])  # parent rows' copies from the records (`parent_copies`)
        self._parents_read: set[str] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = False) -> Warehouse:
        """Open the warehouse at ``path`` (default `default_warehouse_path()`).

        create=False: a reader. The warehouse must exist; no lock is taken; `batch` is refused.
        create=True: the writer. Creates the directory (and marker) if it is missing or empty, takes the
            exclusive writer lock (`KneuronError` naming the holder's pid if another writer has it), then
            deletes the files of batches that never committed (crash, kill -9).
        Errors (`KneuronError`): missing warehouse (reader), non-empty directory that is not a warehouse,
        other format or schema version, a damaged commit record, and (writer) a read-only warehouse (EROFS,
        EACCES on the lock file or a write) or a full disk.
        """
        location = os.fspath(path) if path is not None else os.environ.get(ENV_VAR) or DEFAULT_PATH
        if is_uri(location):  # file://, s3://, gs://, ...: `kneuron.warehouse.opening` dispatches those
            raise KneuronError(f"warehouse {location} is a URI: open it with kneuron.warehouse.open_warehouse")
        root = Path(location).expanduser().absolute()
        if not create:
            if not root.exists():
                raise KneuronError(f"no kneuron warehouse at {root} (no such directory)")
            if not root.is_dir():
                raise KneuronError(f"warehouse path {root} is a file, not a directory")
            if not (root / MARKER_FILE).exists():
                if any(root.iterdir()):
                    raise KneuronError(f"{root} is not a kneuron warehouse (no {MARKER_FILE})")
                raise KneuronError(f"no kneuron warehouse at {root} (empty directory)")
            check_marker(root)
            warehouse = cls(root, None)
            warehouse.refresh()
            return warehouse

        _check_can_host(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(root, root, exc, batch=False) from None
        lock = WriterLock(root, root / LOCK_FILE)
        lock.acquire()
        try:
            _write_marker(root)
            return cls.with_lock(root, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def with_lock(cls, root: Path, lock: WriterLock) -> Warehouse:
        """The writer of the existing warehouse at ``root`` (absolute) under ``lock``, which the caller took
        (`kneuron.warehouse.verify.repair` takes the lock first, to drop damaged commit records before reading them).

        Checks the marker, reads the commit records and deletes the files of batches that never committed.
        The returned writer's `close` releases ``lock``.
        """
        check_marker(root)
        warehouse = cls(root, lock)
        warehouse.refresh()
        try:
            warehouse._collect_garbage()
        except OSError as exc:
            raise write_error(root, exc.filename or root, exc, batch=False) from None
        return warehouse

    @property
    def writable(self) -> bool:
        """Whether this is the writer (holds the lock)."""
        return self._lock is not None and self._lock.held

    def close(self) -> None:
        """Abort a batch left open, release the writer lock (a reader has nothing to release). Idempotent."""
        if self._open_batch is not None:
            self._open_batch.abort()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Warehouse({str(self.root)!r}, {'writer' if self.writable else 'reader'})"

    # ------------------------------------------------------------------ committed state
    def refresh(self) -> None:
        """Pick up batches committed since the last look (a reader sees new commits of a running writer); a
        batch that a newer record replaces (`kneuron.warehouse.compact`) is dropped, even while its record exists."""
        records = read_records(self.root, {**self._replaced, **self._records})
        live, replaced = live_records(records)
        self._replaced = {batch_id: records[batch_id] for batch_id in replaced}
        for batch_id in sorted(live):
            if batch_id not in self._records:
                self._register(live[batch_id])

    def _register(self, record: BatchRecord) -> None:
        """Add a committed batch to what this object knows (records and keys); drop the batches it replaces."""
        self._records[record.batch_id] = record
        add_copies(self._parent_cache, record)
        for entry in record.files:
            self._keys[entry.table].update(tuple(key) for key in entry.keys)
        dropped = [batch_id for batch_id in record.replaces if self._records.pop(batch_id, None) is not None]
        if dropped:  # every replaced batch goes (any() would stop at the first one it drops)
            self._keys = _keys_of(self._records.values())

    def committed_keys(self, table: str) -> set[tuple[Any, ...]]:
        """The keys of ``table``'s committed rows (as of the last `refresh`; the writer's are always current)."""
        return self._keys[table]

    def remember_parents(self, table: str, copies: Mapping[Any, list[dict[str, Any]]]) -> None:
        """Copies of a just-committed batch's own parent rows (`Batch` after its commit), kept for later records."""
        cache = self._parent_cache[table]
        for key, rows in copies.items():
            cache.setdefault(key, rows)

    def batch_closed(self, record: BatchRecord | None) -> None:
        """The open batch ended (`Batch.commit` / `Batch.abort`): no batch is open; a committed one counts."""
        self._open_batch = None
        if record is not None:
            self._register(record)

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
        return [
            entry
            for record in self.batches
            for entry in record.files
            if entry.table == table and _in_partition(entry, run_id=run_id, concept=concept)
        ]

    def paths(self, table: str, *, run_id: str | None = None, concept: str | None = None) -> list[Path]:
        """Absolute paths of the committed Parquet files of ``table`` (see `committed_files`)."""
        return [self.root / entry.path for entry in self.committed_files(table, run_id=run_id, concept=concept)]

    def file_problem(self, batch_id: str, entry: FileRecord) -> KneuronError | None:
        """The cheap check of one committed file (exists, has its recorded size; no hashing): None when it
        passes, else the one-line error naming the file and suggesting ``kneuron verify --repair``."""
        path = self.root / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return missing_file_error(path, entry.table, batch_id)
        except OSError as exc:
            return damaged_file_error(path, entry.table, batch_id, f"cannot stat it: {exc.strerror or exc}")
        if size != entry.bytes:
            return damaged_file_error(path, entry.table, batch_id,
                                      f"{size} bytes, its commit record says {entry.bytes}")
        return None

    def check_files(self, table: str | None = None, *, run_id: str | None = None) -> None:
        """Raise `KneuronError` naming the first committed file (of ``table`` / of run ``run_id``, else of
        every table) that is missing or not of its recorded size; the message says to run
        ``kneuron verify --repair``. Costs one stat per file; contents are not read (see `kneuron.warehouse.verify`)."""
        if table is not None:
            spec_of(table)
        for record in self.batches:
            for entry in record.files:
                if table is not None and entry.table != table:
                    continue
                if run_id is not None and entry.partition.get("run_id") != run_id:
                    continue
                problem = self.file_problem(record.batch_id, entry)
                if problem is not None:
                    raise problem

    def check_run_files(self, run_id: str) -> None:
        """`check_files` of one run: every committed file of ``run_id`` (all tables) exists with its recorded
        size. Resuming writers call it first: a pair whose stored files are gone must be un-committed with
        ``kneuron verify --repair`` before it can be written again."""
        self.check_files(run_id=run_id)

    def read(self, table: str, *, run_id: str | None = None, concept: str | None = None,
             columns: list[str] | None = None) -> pa.Table:
        """The committed rows of ``table`` (optionally one run / concept) as one Arrow table of its schema.

        A committed file that is missing or unreadable is a one-line `KneuronError` naming it.
        """
        spec = spec_of(table)
        parts = []
        for record in self.batches:
            for entry in record.files:
                if entry.table != table or not _in_partition(entry, run_id=run_id, concept=concept):
                    continue
                parts.append(self._read_file(record.batch_id, entry, columns))
        if not parts:
            empty = spec.schema.empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables(parts)

    def supersedable_keys(self, spec: TableSpec, keys: Iterable[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """The committed ``keys`` of ``spec`` whose every committed row may be superseded (``spec.supersedable``:
        e.g. samples rows that are all ``skipped``); reads only the files that hold one of those keys."""
        if spec.supersedable is None:
            return set()
        column, value = spec.supersedable
        wanted = {tuple(key) for key in keys}
        allowed: set[tuple[Any, ...]] = set()
        refused: set[tuple[Any, ...]] = set()
        for record in self.batches:
            for entry in record.files:
                if entry.table != spec.name or not wanted & {tuple(k) for k in entry.keys}:
                    continue
                rows = self._read_file(record.batch_id, entry, [*spec.key, column]).to_pylist()
                for row in rows:
                    key = tuple(row[name] for name in spec.key)
                    if key in wanted:
                        (allowed if row[column] == value else refused).add(key)
        return allowed - refused

    def parent_copies(self, table: str, keys: Iterable[Any]) -> list[dict[str, Any]]:
        """JSON copies (`kneuron.warehouse.parents`) of the rows of parent ``table`` with these keys: from the copies
        the
        commit records carry, else read from the table's files once per process; keys found nowhere are left out."""
        if set(keys) - set(self._parent_cache[table]) and table not in self._parents_read:
            self._parents_read.add(table)  # once: rows of a parent file that cannot be read have no copy here
            files = [(r.batch_id, e) for r in self._records.values() for e in r.files if e.table == table]
            add_read_rows(self._parent_cache, table, files, lambda batch_id, e: self._read_file(batch_id, e, None))
        return pick(self._parent_cache, table, keys)

    def runs(self) -> list[dict[str, Any]]:
        """The committed ``runs`` rows as dicts, oldest first."""
        rows = self.read("runs").to_pylist()
        return sorted(rows, key=lambda row: (row["created_at"], row["run_id"]))

    def run_ids(self) -> set[str]:
        """Ids of the committed runs."""
        if not self.writable:
            self.refresh()
        return {key[0] for key in self._keys["runs"]}

    def _read_file(self, batch_id: str, entry: FileRecord, columns: list[str] | None) -> pa.Table:
        """One committed file as Arrow; `KneuronError` naming it when it is missing or does not read."""
        problem = self.file_problem(batch_id, entry)
        if problem is not None:
            raise problem
        path = self.root / entry.path
        check_digests(self.root, [(batch_id, entry)])
        try:
            return pq.ParquetFile(path).read(columns=columns)
        except (OSError, pa.ArrowException) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise damaged_file_error(path, entry.table, batch_id, f"unreadable: {first}") from None

    def finished_pairs(self, run_id: str) -> set[tuple[str, int]]:
        """(concept, image_id) pairs of ``run_id`` whose committed ``samples`` row is really there.

        A pair counts when a committed ``samples`` file holds its row (ok or skipped) and that file exists with
        its recorded size (one stat per samples file of the run). Pairs whose samples file is missing (or of
        the wrong size) are left out, so a resuming ingest does not take them for done; their commit record
        still claims them, though, so writing them again is refused until ``kneuron verify --repair`` (`repair`)
        has removed that batch — `check_run_files` says so in one line, and resuming writers call it first.
        """
        if not self.writable:
            self.refresh()
        pairs: set[tuple[str, int]] = set()
        for record in self._records.values():
            for entry in record.files:
                if entry.table != "samples" or entry.partition.get("run_id") != run_id:
                    continue
                if self.file_problem(record.batch_id, entry) is None:
                    pairs.update((concept, image_id) for run, concept, image_id in entry.keys if run == run_id)
        return pairs

    # ------------------------------------------------------------------ writing
    def batch(self, batch_id: str | None = None) -> Batch:
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

    def remove_batch(self, batch_id: str) -> list[Path]:
        """Un-commit batch ``batch_id`` (writer only) and delete its files; returns the files deleted.

        The commit record goes first (and its directory is fsynced), so a crash in between leaves unreferenced
        files, which the next writer deletes; the batch is never half visible. Its keys are free again: the
        next ingest re-records its (concept, image) pairs.
        """
        if not self.writable:
            raise KneuronError(f"warehouse {self.root} is open read-only; open it with create=True to repair it")
        with deferred_signals():
            record = self._records.get(batch_id)
            try:
                remove_record(self.root, batch_id)
            except OSError as exc:
                raise write_error(self.root, exc.filename or self.root / MANIFEST_DIR, exc, batch=False) from None
            self._records.pop(batch_id, None)
            self._keys = _keys_of(self._records.values())
            try:
                return delete_unreferenced(self.root, [e.path for e in record.files] if record else [],
                                           self._records.values())
            except OSError as exc:  # un-committed already: the next writer deletes the rest
                raise KneuronError(f"batch {batch_id} of warehouse {self.root} was removed from the commit records "
                                   f"but its file {exc.filename} could not be deleted ({exc.strerror or exc}); the "
                                   "next writer deletes it") from None

    def _collect_garbage(self) -> None:
        """Finish what a crash left: remove the records of replaced batches, then the writer files that no
        commit record names, and directories left empty (`kneuron.warehouse.garbage`)."""
        self.garbage_collected = collect_garbage(self.root, self._records.values(), self._replaced)
        self._replaced = {}


# ---------------------------------------------------------------------- helpers
def _write_marker(root: Path) -> None:
    """Create ``warehouse.json`` (temp name, rename, fsync) unless it exists; refuses a foreign directory."""
    marker = root / MARKER_FILE
    if marker.exists():
        return
    _check_can_host(root)
    temp = root / f".{MARKER_FILE}.tmp"
    try:
        temp.write_text(_marker_text(), encoding="utf-8")
        os.replace(temp, marker)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise write_error(root, marker, exc, batch=False) from None
    fsync_dir(root)


def _in_partition(entry: FileRecord, *, run_id: str | None, concept: str | None) -> bool:
    """Whether a committed file belongs to run ``run_id`` and concept ``concept`` (None: any)."""
    wanted = (("run_id", run_id), ("concept", concept))
    return all(entry.partition.get(key) == value for key, value in wanted if value is not None)


def _keys_of(records: Iterable[BatchRecord]) -> dict[str, set[tuple[Any, ...]]]:
    """The committed keys of every table in ``records`` (as the writer's duplicate checks use them)."""
    keys: dict[str, set[tuple[Any, ...]]] = {name: set() for name in TABLES}
    for record in records:
        for entry in record.files:
            keys.setdefault(entry.table, set()).update(tuple(key) for key in entry.keys)
    return keys

