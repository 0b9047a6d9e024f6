"""Check every committed file of a warehouse against its commit record, and repair what fails with the least loss.

    report = verify_warehouse("kneuron-warehouse")     # reads every committed file; changes nothing
    report.ok, report.problems, report.bad_batches
    result = repair("kneuron-warehouse", dry_run=True)  # the plan only; without dry_run: carry it out

Per committed file, `verify_warehouse` checks, in this order (the first failure is the file's problem):

- ``missing``: the file exists;
- ``size``: it has the byte size of its record;
- ``checksum``: the sha256 of its bytes is that of the record (records made before checksums have none);
- ``unreadable``: it reads as Parquet (fully decoded when the record has no checksum; with a matching
  checksum the bytes are the ones written, so its footer and ``run_id`` column are read);
- ``rows``: it holds the record's number of rows;
- ``partition``: every row's partition columns (run_id, concept) hold the record's partition values (a forged
  record that moves a file to another partition is caught; the views read the value from the directory);
- ``orphan_run``: (tables other than ``runs``) every row's ``run_id`` names a committed run, i.e. one whose
  ``runs`` row sits in a file without problems or has a copy in a commit record (`kneuron.warehouse.parents`). A
  batch that fails loses its runs, so this is repeated until nothing changes.

A commit record that cannot be parsed is a ``damaged_record`` problem of its batch. A parent row (runs, evals,
neuron_sets) that rows name, that no record holds and that a copy can re-create (an interrupted repair) is a
``missing_parent`` problem of no batch. `repair` takes the writer lock and carries out `kneuron.warehouse.repair_plan`:
the least removal that makes the warehouse consistent (damaged batches whole, damaged files of compacted
records one by one, parent rows re-created from copies); it refuses, changing nothing, when that would remove
intact batches too, unless ``force``. Each step removes a commit record before the files only it names, so a
crash in between leaves unreferenced files that the next writer deletes. The removed (run, concept, image) pairs
are no longer finished: the next ``kneuron ingest`` of that run records them again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kneuron.warehouse.digests import sha256_of
from kneuron.warehouse.errors import write_error
from kneuron.warehouse.garbage import delete_unreferenced
from kneuron.warehouse.layout import LOCK_FILE, MANIFEST_DIR, MARKER_FILE
from kneuron.warehouse.lock import WriterLock
from kneuron.warehouse.manifest import (
    BatchRecord,
    FileRecord,
    live_records,
    read_records,
    remove_record,
    remove_records,
)
from kneuron.warehouse.opening import open_warehouse
from kneuron.warehouse.parents import PARENTS, copies_in, decode_rows
from kneuron.warehouse.repair_plan import RepairPlan, plan_repair
from kneuron.warehouse.schema import TABLES
from kneuron.warehouse.signals import deferred_signals
from kneuron.warehouse.store import Warehouse, check_marker, default_warehouse_path

PROBLEM_KINDS = ("missing", "size", "checksum", "unreadable", "rows", "partition", "orphan_run", "missing_parent",
                 "damaged_record")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a committed batch.

    batch_id: the batch it belongs to (removing this batch is the repair).
    table: the file's table ("" for a damaged commit record).
    path: the file, relative to the warehouse root (or the commit record's path).
    kind: one of `PROBLEM_KINDS`.
    detail: what was found, one line.
    """

    batch_id: str
    table: str
    path: str
    kind: str
    detail: str


@dataclass(frozen=True)
class TableSummary:
    """What a table's commit records hold and how much of it failed the checks."""

    table: str
    files: int
    rows: int
    bad_files: int
    bad_batches: int


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify_warehouse`: a summary per table and every problem, per file."""

    root: Path
    batches: int
    tables: list[TableSummary]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    @property
    def bad_batches(self) -> list[str]:
        """Ids of the batches that fail (sorted); a ``missing_parent`` problem belongs to no batch."""
        return sorted({problem.batch_id for problem in self.problems if problem.batch_id})

    def problems_by_table(self) -> dict[str, list[Problem]]:
        """Problems grouped by table (a damaged commit record is under "")."""
        return _group(self.problems, "table")

    def problems_by_batch(self) -> dict[str, list[Problem]]:
        """Problems grouped by batch id."""
        return _group(self.problems, "batch_id")

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per table (table, files, rows, bad_files, bad_batches), for printing."""
        return [vars(summary).copy() for summary in self.tables]

    def problem_rows(self) -> list[dict[str, Any]]:
        """One dict per problem (batch_id, table, path, kind, detail), by batch then path, for printing."""
        ordered = sorted(self.problems, key=lambda p: (p.batch_id, p.table, p.path))
        return [vars(problem).copy() for problem in ordered]


@dataclass(frozen=True)
class RepairResult:
    """What `repair` found and did: the report before, its plan, the batches and files removed, the report after.

    done: False when nothing was changed (``dry_run``, or the plan removes intact batches and ``force`` was not
    given: ``refused``); ``after`` is then ``before``."""

    before: VerifyReport
    removed_batches: list[str]
    removed_files: list[str]
    after: VerifyReport
    plan: RepairPlan | None = None
    done: bool = True
    refused: bool = False


# ---------------------------------------------------------------------- verify
def verify_warehouse(root: str | os.PathLike[str] | Warehouse | None = None) -> VerifyReport:
    """Check every committed file of the warehouse at ``root`` (see the module docstring); changes nothing.

    root: warehouse directory (default `default_warehouse_path()`) or an open `Warehouse`.
    Raises `KneuronError` only when ``root`` is not a warehouse of this schema version.
    """
    warehouse_root = root.root if isinstance(root, Warehouse) else _open_reader_root(root)
    damaged: dict[str, str] = {}
    records = read_records(warehouse_root, damaged=damaged)
    return _verify(warehouse_root, records, damaged)


def _open_reader_root(root: str | os.PathLike[str] | None) -> Path:
    """The absolute root of an existing warehouse (`KneuronError` otherwise, as `Warehouse.open` says it);
    its commit records are not read here, so damaged ones can be reported."""
    path = Path(root if root is not None else default_warehouse_path()).expanduser().absolute()
    if not (path / MARKER_FILE).is_file():
        open_warehouse(path)  # raises the one-line error for a missing path, a file, a foreign directory
    check_marker(path)
    return path


def _verify(root: Path, records: dict[str, BatchRecord], damaged: dict[str, str]) -> VerifyReport:
    """The report over ``records`` (committed batches by id) plus the ``damaged`` records (id -> reason).
    Batches that another record replaces (`kneuron.warehouse.compact`) are not part of the warehouse: not checked."""
    records, _ = live_records(records)
    problems = [Problem(batch_id, "", f"{MANIFEST_DIR}/{batch_id}.json", "damaged_record", reason)
                for batch_id, reason in sorted(damaged.items())]
    run_ids: dict[tuple[str, str], set[str]] = {}
    for batch_id in sorted(records):
        for entry in records[batch_id].files:
            problem, run_ids[(batch_id, entry.path)] = _check_file(root, batch_id, entry)
            if problem is not None:
                problems.append(problem)
    problems.extend(_orphan_problems(records, run_ids, {p.batch_id for p in problems}))
    problems.extend(_missing_parents(records, run_ids))
    return VerifyReport(root=root, batches=len(records) + len(damaged),
                        tables=_summaries(records, problems), problems=problems)


class _Finding(NamedTuple):
    """A failed check of one file: its `PROBLEM_KINDS` kind and the one-line detail."""

    kind: str
    detail: str


def _check_file(root: Path, batch_id: str, entry: FileRecord) -> tuple[Problem | None, set[str]]:
    """The first problem of one committed file (or None) and the run ids its rows name (empty if unread).

    The checks run in the module docstring's order: the bytes (`_check_bytes`), then the Parquet content
    (`_check_content`), which is read only when the bytes pass.
    """
    path = root / entry.path
    finding = _check_bytes(path, entry)
    values: dict[str, set[Any]] = {}
    if finding is None:
        finding, values = _check_content(path, entry)
    if finding is not None:
        return Problem(batch_id, entry.table, entry.path, finding.kind, finding.detail), set()
    return None, values.get("run_id", set())


def _check_bytes(path: Path, entry: FileRecord) -> _Finding | None:
    """The first of ``missing``, ``size``, ``checksum`` (or ``unreadable`` while hashing) that ``path`` fails."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return _Finding("missing", "the file does not exist")
    except OSError as exc:
        return _Finding("missing", f"cannot stat the file: {exc.strerror or exc}")
    if size != entry.bytes:
        return _Finding("size", f"{size} bytes, the commit record says {entry.bytes}")
    if entry.sha256 is None:
        return None
    try:
        digest = sha256_of(path)
    except OSError as exc:
        return _Finding("unreadable", f"cannot read the file: {exc.strerror or exc}")
    if digest != entry.sha256:
        return _Finding("checksum", f"sha256 {digest[:12]}..., the commit record says {entry.sha256[:12]}...")
    return None


def _check_content(path: Path, entry: FileRecord) -> tuple[_Finding | None, dict[str, set[Any]]]:
    """The first of ``unreadable``, ``rows``, ``partition`` that ``path`` fails (or None), and the distinct values
    of its ``run_id`` and partition columns (empty when it cannot be read)."""
    try:
        rows, values = _read_parquet(path, full=entry.sha256 is None, columns=sorted({"run_id", *entry.partition}))
    except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return _Finding("unreadable", f"not readable as Parquet: {first}"), {}
    if rows != entry.rows:
        return _Finding("rows", f"{rows} rows, the commit record says {entry.rows}"), values
    for column, value in sorted(entry.partition.items()):
        stray = sorted(str(v) for v in values.get(column, set()) if v != value)
        if stray:
            return _Finding("partition", f"rows have {column} {stray[0]!r}, its partition is {value!r}"), values
    return None, values


def _read_parquet(path: Path, *, full: bool, columns: list[str]) -> tuple[int, dict[str, set[Any]]]:
    """(rows, column -> distinct values for ``columns``) of a Parquet file, reading row group by row group.

    full: decode every column (proves the whole file reads); otherwise only ``columns`` are decoded.
    """
    parquet = pq.ParquetFile(path)
    rows = 0
    values: dict[str, set[Any]] = {column: set() for column in columns}
    for batch in parquet.iter_batches(columns=None if full else columns):
        rows += batch.num_rows
        for column in columns:
            values[column].update(pc.unique(batch.column(column)).to_pylist())
    return rows, values


def _orphan_problems(records: dict[str, BatchRecord], run_ids: dict[tuple[str, str], set[str]],
                     failing: set[str]) -> list[Problem]:
    """``orphan_run`` problems: files naming runs whose ``runs`` row is not in a good batch (to a fixpoint)."""
    failing = set(failing)
    found: list[Problem] = []
    runs_files = [(batch_id, entry.path) for batch_id, record in records.items() for entry in record.files
                  if entry.table == "runs"]
    copied = set(copies_in(records.values())["runs"])  # runs rows repair can re-create (`kneuron.warehouse.parents`)
    while True:
        committed = copied | {run for batch_id, path in runs_files if batch_id not in failing
                              for run in run_ids[(batch_id, path)]}
        new: list[Problem] = []
        for batch_id in sorted(records):
            if batch_id in failing:
                continue
            for entry in records[batch_id].files:
                unknown = sorted(run_ids[(batch_id, entry.path)] - committed) if entry.table != "runs" else []
                if unknown:
                    new.append(Problem(batch_id, entry.table, entry.path, "orphan_run",
                                       f"rows name run {unknown[0]!r}, which has no committed runs row"))
        if not new:
            return found
        found.extend(new)
        failing.update(problem.batch_id for problem in new)


def _missing_parents(records: dict[str, BatchRecord], run_ids: dict[tuple[str, str], set[str]]) -> list[Problem]:
    """``missing_parent`` problems: parent rows (`kneuron.warehouse.parents`) that rows name but no record holds, while
    a copy exists (an interrupted repair); `repair` re-creates them. They belong to no batch."""
    copies = copies_in(records.values())
    found = []
    for parent, column in PARENTS.items():
        present = {key[0] for r in records.values() for e in r.files if e.table == parent for key in e.keys}
        named = {row.get(column) for r in records.values() for row in r.parents.get(parent, [])}
        if parent == "runs":
            named |= {run for values in run_ids.values() for run in values}
        for key in sorted((named - present) & set(copies[parent]), key=str):
            found.append(Problem("", parent, f"{parent}/{column}={key}", "missing_parent",
                                 f"its {parent} row is not in the warehouse; `kneuron verify --repair` re-creates "
                                 "it from a copy"))
    return found


def _summaries(records: dict[str, BatchRecord], problems: list[Problem]) -> list[TableSummary]:
    """One `TableSummary` per table of the schema (plus any other table a record names)."""
    tables = list(TABLES) + sorted({e.table for r in records.values() for e in r.files} - set(TABLES))
    bad_files = {(p.table, p.path) for p in problems}
    summaries = []
    for table in tables:
        entries = [(batch_id, e) for batch_id, r in records.items() for e in r.files if e.table == table]
        summaries.append(TableSummary(
            table=table,
            files=len(entries),
            rows=sum(e.rows for _, e in entries),
            bad_files=sum((table, e.path) in bad_files for _, e in entries),
            bad_batches=len({p.batch_id for p in problems if p.table == table}),
        ))
    return summaries


def _group(problems: list[Problem], attribute: str) -> dict[str, list[Problem]]:
    grouped: dict[str, list[Problem]] = {}
    for problem in problems:
        grouped.setdefault(getattr(problem, attribute), []).append(problem)
    return grouped


# ---------------------------------------------------------------------- repair
def repair(root: str | os.PathLike[str] | None = None, *, dry_run: bool = False,
           force: bool = False) -> RepairResult:
    """Make the warehouse consistent with the least removal (`kneuron.warehouse.repair_plan`), under the writer lock.

    Damaged commit records are dropped (their files collected as leftovers); damaged batches are removed whole,
    damaged files of compacted records one by one; parent rows lost with them are re-created from copies. When
    the plan would also remove intact batches (a run whose ``runs`` row has no copy anywhere), nothing changes
    unless ``force``. dry_run: plan only. Raises `KneuronError` when ``root`` is not a warehouse, another writer
    holds the lock, or the warehouse is read-only.
    """
    path = _open_reader_root(root)
    lock = WriterLock(path, path / LOCK_FILE)
    lock.acquire()
    try:
        damaged: dict[str, str] = {}
        records = read_records(path, damaged=damaged)
        before = _verify(path, records, damaged)
        plan = plan_repair(before.problems, live_records(records)[0], damaged)
        if dry_run or plan.empty or (plan.dependents and not force):
            return RepairResult(before=before, removed_batches=[], removed_files=[], after=before, plan=plan,
                                done=False, refused=bool(plan.dependents and not force and not dry_run))
        removed_files = _carry_out(path, lock, plan)
        after = _verify(path, read_records(path), {})
    finally:
        lock.release()
    removed = sorted(set(plan.damaged_records) | set(plan.remove) | set(plan.dependents))
    return RepairResult(before=before, removed_batches=removed, removed_files=sorted(removed_files), after=after,
                        plan=plan)


def _carry_out(path: Path, lock: WriterLock, plan: RepairPlan) -> list[str]:
    """Do ``plan``: each step is a commit of its own, so an interruption leaves a warehouse the next repair finishes
    (a removed batch's parent rows stay recoverable from the copies in the other records)."""
    removed: list[str] = []
    for batch_id in plan.damaged_records:
        _remove_record(path, batch_id)
    writer = Warehouse.with_lock(path, lock)  # also deletes the files the damaged records named
    removed.extend(p.relative_to(path).as_posix() for p in writer.garbage_collected)
    for batch_id in plan.remove:
        removed.extend(p.relative_to(path).as_posix() for p in writer.remove_batch(batch_id))
    for batch_id, bad in sorted(plan.trim.items()):
        removed.extend(_trim(writer, batch_id, set(bad)))
    if plan.recover:
        with writer.batch() as batch:
            for table in PARENTS:  # runs first: the others name a run
                if plan.recover.get(table):
                    batch.add(table, decode_rows(table, plan.recover[table]))
    for batch_id in plan.dependents:
        removed.extend(p.relative_to(path).as_posix() for p in writer.remove_batch(batch_id))
    return removed


def _trim(writer: Warehouse, batch_id: str, bad: set[str]) -> list[str]:
    """Replace batch ``batch_id`` by a record of its files but ``bad`` (one rename), then delete ``bad``."""
    old = next(record for record in writer.batches if record.batch_id == batch_id)
    with deferred_signals():
        batch = writer.batch()
        batch.replaces = [batch_id]
        for entry in old.files:
            if entry.path not in bad:
                batch.keep(entry)
        for parent, rows in old.parents.items():
            if parent in PARENTS:
                batch.refer(parent, {row.get(PARENTS[parent]) for row in rows})
        record = batch.commit()
        assert record is not None
        remove_records(writer.root, [batch_id])
        gone = delete_unreferenced(writer.root, sorted(bad), writer.batches)
    return [p.relative_to(writer.root).as_posix() for p in gone]


def _remove_record(root: Path, batch_id: str) -> None:
    """Delete one commit record (the lock is held); a read-only warehouse is a one-line error."""
    try:
        remove_record(root, batch_id)
    except OSError as exc:
        raise write_error(root, root / MANIFEST_DIR / f"{batch_id}.json", exc, batch=False) from None

