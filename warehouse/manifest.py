"""Commit records: a batch of files is part of the warehouse exactly when ``_manifest/<batch_id>.json`` exists.

A record lists the batch's files (table, relative path, rows, bytes, sha256 of the bytes, partition values)
and, for tables with a key (runs, samples, evals, neuron_sets), the distinct key values the file holds, so that
the committed (concept, image) pairs of a run can be listed without opening any Parquet file. Records are
written to a temporary name, fsynced and renamed, so a reader sees a whole record or none. Records written
before checksums existed have no ``sha256`` (None): such files are verified by size and row count only.

A record may *replace* earlier batches (``replaces``: their ids; `kneuron.warehouse.compact` writes such records): from
the moment it exists, the batches it names are no longer part of the warehouse, even while their records are
still on disk (`live_records`); writers delete those records, then the files no live record names. One rename
thus swaps many batches for one. Records without ``replaces`` are stored without the key, as before. A record
with ``replaces`` (compaction's, repair's) holds files of many earlier batches: its units of repair are its files,
not the whole batch (`kneuron.warehouse.repair_plan`).

A record may also carry ``parents``: copies of the rows of the parent tables (`kneuron.warehouse.parents`: ``runs``,
``evals``, ``neuron_sets``) that its rows name, so that damage to the batch holding a run's ``runs`` row does not
orphan every other batch of the run: repair re-creates the row from a copy. Stored only when non-empty.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.layout import MANIFEST_DIR
from kneuron.warehouse.schema import SCHEMA_VERSION
from kneuron.warehouse.signals import deferred_signals, point

RECORD_FORMAT = "kneuron-batch"


@dataclass(frozen=True)
class FileRecord:
    """One committed Parquet file.

    path: relative to the warehouse root, ``/``-separated.
    partition: partition column -> value (the unencoded value, as stored in the file's columns).
    keys: distinct values of the table's key columns in this file (empty for tables without a key).
    sha256: hex digest of the file's bytes as written (None in records made before checksums existed).
    """

    table: str
    path: str
    rows: int
    bytes: int
    partition: dict[str, Any]
    keys: list[list[Any]] = field(default_factory=list)
    sha256: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    """The commit record of one batch."""

    batch_id: str
    committed_at: str
    files: list[FileRecord]
    format: str = RECORD_FORMAT
    schema_version: int = SCHEMA_VERSION
    replaces: list[str] = field(default_factory=list)
    parents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> str:
        """The record as compact JSON (keys sorted), the form stored in ``_manifest/<batch_id>.json``."""
        raw = asdict(self)
        for optional in ("replaces", "parents"):
            if not raw[optional]:
                del raw[optional]
        return json.dumps(raw, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BatchRecord:
        """Parse a stored record; `ValueError`/`KeyError`/`TypeError` when it is not one."""
        raw = json.loads(text)
        if raw.get("format") != RECORD_FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, not {RECORD_FORMAT!r}")
        files = [FileRecord(**entry) for entry in raw["files"]]
        replaces = raw.get("replaces", [])
        if not isinstance(replaces, list) or not all(isinstance(item, str) for item in replaces):
            raise ValueError("its replaces is not a list of batch ids")
        parents = raw.get("parents", {})
        if not isinstance(parents, dict) or not all(isinstance(rows, list) for rows in parents.values()):
            raise ValueError("its parents is not a table -> rows mapping")
        return cls(batch_id=raw["batch_id"], committed_at=raw["committed_at"], files=files,
                   format=raw["format"], schema_version=raw["schema_version"], replaces=replaces,
                   parents=parents)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    point("fsync", path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_record(root: Path, record: BatchRecord, published: list[bool] | None = None) -> Path:
    """Commit ``record``: write ``_manifest/.<id>.json.tmp``, fsync, rename to ``_manifest/<id>.json``.

    published: set to ``[True]`` the moment the rename has happened (from then on the record is the
    warehouse's, and nothing it names may be removed, whatever fails afterwards)."""
    directory = root / MANIFEST_DIR
    directory.mkdir(exist_ok=True)
    final = directory / f"{record.batch_id}.json"
    temp = directory / f".{record.batch_id}.json.tmp"
    with deferred_signals():
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                handle.write(record.to_json())
                handle.flush()
                point("fsync", temp)
                os.fsync(handle.fileno())
            point("rename", final)
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if published is not None:
            published[:] = [True]
        fsync_dir(directory)
    return final


def remove_record(root: Path, batch_id: str) -> bool:
    """Un-commit a batch: delete ``_manifest/<batch_id>.json`` and fsync the directory (its files stay).

    Returns whether there was a record. After this the batch's files are unreferenced leftovers, which the
    next writer deletes like those of a crashed batch.
    """
    directory = root / MANIFEST_DIR
    with deferred_signals():
        try:
            point("unlink", directory / f"{batch_id}.json")
            (directory / f"{batch_id}.json").unlink()
        except FileNotFoundError:
            return False
        fsync_dir(directory)
    return True


def remove_records(root: Path, batch_ids: list[str]) -> None:
    """Delete the commit records of ``batch_ids`` (missing ones are fine), then fsync ``_manifest/`` once."""
    directory = root / MANIFEST_DIR
    with deferred_signals():
        for batch_id in batch_ids:
            point("unlink", directory / f"{batch_id}.json")
            (directory / f"{batch_id}.json").unlink(missing_ok=True)
        if batch_ids:
            fsync_dir(directory)


def live_records(records: dict[str, BatchRecord]) -> tuple[dict[str, BatchRecord], set[str]]:
    """(the records of the batches that are part of the warehouse, ids of those replaced by another record)."""
    replaced = {batch_id for record in records.values() for batch_id in record.replaces}
    return {batch_id: r for batch_id, r in records.items() if batch_id not in replaced}, replaced & set(records)


#: times `read_records` lists ``_manifest/`` again when a record vanished between listing and reading it
RELIST_TRIES = 20


def read_records(root: Path, known: dict[str, BatchRecord] | None = None,
                 damaged: dict[str, str] | None = None) -> dict[str, BatchRecord]:
    """All commit records under ``root`` by batch id; records already in ``known`` are not read again.

    A record that cannot be parsed (records are written atomically, so it was edited or damaged by hand)
    raises `KneuronError` naming it, unless ``damaged`` is given: then its batch id -> reason goes there.
    A record that disappears between listing and reading (a writer replaced its batch and removed it) makes
    the listing start again: a record is only removed once the record replacing it exists, so the new listing
    holds that one. The result includes replaced records; `live_records` drops them.
    """
    for _ in range(RELIST_TRIES):
        try:
            return _read_listing(root, known, damaged)
        except FileNotFoundError:
            continue
    raise KneuronError(f"the commit records of warehouse {root} keep changing while being read; try again")


def _read_listing(root: Path, known: dict[str, BatchRecord] | None,
                  damaged: dict[str, str] | None) -> dict[str, BatchRecord]:
    """One pass of `read_records`; `FileNotFoundError` when a listed record vanished before it was read."""
    records = dict(known or {})
    directory = root / MANIFEST_DIR
    if not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        batch_id = path.stem
        if batch_id in records:
            continue
        try:
            record = BatchRecord.from_json(path.read_text(encoding="utf-8"))
            if record.batch_id != batch_id:
                raise ValueError(f"it names batch {record.batch_id!r}")
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if damaged is None:
                raise KneuronError(f"damaged warehouse commit record {path}: {exc}; "
                                   "run `kneuron verify --repair` to drop its batch") from None
            damaged[batch_id] = str(exc) or type(exc).__name__
            continue
        records[batch_id] = record
    return records
