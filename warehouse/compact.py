"""Compaction: merge the small files of each partition into large ones, as one atomic warehouse operation.

    result = compact("kneuron-warehouse")         # writer lock; one commit record replaces every batch

Every ingest chunk is a batch of a few small files per table; thousands of them make every query open thousands
of files. `compact` rewrites them on the manifest protocol itself:

1. plan (`plan_compaction`): per (table, partition), the files below ``target_rows`` rows are merged, in commit
   order, into as few files of at most ``target_rows`` rows as they fill (``samples``, whose view picks the
   latest row of a key, is always merged whole, so its rows keep their order); larger files are kept as they
   are. The ``neuron_rollup`` files of a partition are summed into one; a partition whose rollup is not
   complete (an old warehouse, `kneuron.warehouse.rollup`) gets its rollup rebuilt from its image rows.
2. write: the merged files are written under temporary names (checked against their commit records' sha256
   as they are read), renamed, and then ONE commit record lists the merged files and the kept ones and names
   every batch it replaces (``replaces``). That rename is the switch: before it readers see the old batches,
   after it only the new one (`kneuron.warehouse.manifest.live_records`).
3. clean up: the replaced batches' records are removed (fsynced), then their files that the new record does not
   keep.

A crash anywhere leaves a valid warehouse: before step 2's record, the old batches are intact and the new files
are unreferenced leftovers; after it, the old records are ignored by readers and, like the files only they
name, removed by the next writer (`kneuron.warehouse.garbage`). Rows of every table are the same before and after
(order aside), and so is every query (``samples`` keeps one row per key, the same one): except that
``neuron_rollup`` holds one row per neuron and partition instead of one per neuron and batch — the same sums.
A reader that opened the old files before step 3 must reconnect (`kneuron sql` connects per command).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.errors import damaged_file_error, write_error
from kneuron.warehouse.garbage import delete_unreferenced
from kneuron.warehouse.manifest import BatchRecord, FileRecord, remove_records
from kneuron.warehouse.opening import open_warehouse
from kneuron.warehouse.parents import PARENTS, copies_in
from kneuron.warehouse.rollup import complete_partitions, merge_rollups, partition_key, rollup_rows
from kneuron.warehouse.schema import TABLES, spec_of
from kneuron.warehouse.signals import deferred_signals
from kneuron.warehouse.store import Warehouse

#: rows per merged file (neuron_stats: ~9 bytes per row, so ~300 MB); files this large are kept as they are
DEFAULT_TARGET_ROWS = 1 << 25

Log = Callable[[str], None]


@dataclass
class GroupPlan:
    """What compaction does with the files of one (table, partition), in commit order.

    keep: files kept as they are; merge: lists of files each merged into one new file; rebuild_rollup: for
    ``neuron_rollup``: write the partition's rollup from the ``neuron_stats`` files ``rollup_from`` (a rebuilt
    rollup) or from the rollup files of ``merge`` (summed), instead of concatenating them.
    """

    table: str
    partition: dict[str, Any]
    keep: list[tuple[str, FileRecord]] = field(default_factory=list)
    merge: list[list[tuple[str, FileRecord]]] = field(default_factory=list)
    rollup_from: list[tuple[str, FileRecord]] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        """Whether this group rewrites anything."""
        return bool(self.merge or self.rollup_from)


@dataclass
class CompactResult:
    """What `compact` did (or, with ``dry_run``, would do)."""

    root: str
    batch_id: str | None
    batches_replaced: int
    files_before: int
    files_after: int
    files_merged: int
    rollups_rebuilt: list[tuple[str, str]]
    bytes_before: int
    bytes_after: int
    removed: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the terminal."""
        if self.batch_id is None and not self.files_merged and not self.rollups_rebuilt:
            return f"warehouse {self.root}: nothing to compact ({self.files_before} files, {self.batches_replaced} " \
                   "batch(es))"
        rebuilt = f", rollup rebuilt for {len(self.rollups_rebuilt)} partition(s)" if self.rollups_rebuilt else ""
        verb = "would compact" if self.batch_id is None else "compacted"
        return (f"{verb} warehouse {self.root}: {self.files_before} files in {self.batches_replaced} batch(es) -> "
                f"{self.files_after} files in 1 batch ({self.files_merged} merged{rebuilt}); "
                f"{self.bytes_before / 1e6:.1f} MB -> {self.bytes_after / 1e6:.1f} MB")


def plan_compaction(records: list[BatchRecord], target_rows: int = DEFAULT_TARGET_ROWS) -> list[GroupPlan]:
    """The per-(table, partition) plan for the live ``records`` (commit order); see the module docstring."""
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], GroupPlan] = {}
    for record in records:
        for entry in record.files:
            key = (entry.table, tuple(sorted((k, str(v)) for k, v in entry.partition.items())))
            groups.setdefault(key, GroupPlan(entry.table, dict(entry.partition))).keep.append(
                (record.batch_id, entry))
    complete = complete_partitions(records)
    stats_files = {partition_key(plan.partition): plan.keep for plan in groups.values() if plan.table == "neuron_stats"}
    for plan in groups.values():
        files, plan.keep = plan.keep, []
        part = partition_key(plan.partition)
        if plan.table == "neuron_rollup" and part in stats_files:
            if part not in complete:
                plan.rollup_from = list(stats_files[part])
            elif len(files) > 1:
                plan.merge = [files]
            else:
                plan.keep = files
            continue
        if spec_of(plan.table).supersedable is not None:
            plan.merge, plan.keep = ([files], []) if len(files) > 1 else ([], files)
            continue
        small = [item for item in files if item[1].rows < target_rows]
        if len(small) < 2:
            plan.keep = files
            continue
        packed = _pack(small, target_rows)
        plan.keep = [item for item in files if item[1].rows >= target_rows] + [g[0] for g in packed if len(g) == 1]
        plan.merge = [group for group in packed if len(group) > 1]
    for part, files in stats_files.items():  # a partition with image rows but no rollup file at all
        values = {"run_id": part[0], "concept": part[1]}
        key = ("neuron_rollup", tuple(sorted(values.items())))
        if part not in complete and key not in groups:
            groups[key] = GroupPlan("neuron_rollup", values, rollup_from=list(files))
    order = list(TABLES)
    return sorted(groups.values(), key=lambda p: (order.index(p.table) if p.table in order else len(order),
                                                  sorted((k, str(v)) for k, v in p.partition.items())))


def compact(root: str | os.PathLike[str] | None = None, *, target_rows: int = DEFAULT_TARGET_ROWS,
            dry_run: bool = False, log: Log | None = None) -> CompactResult:
    """Compact the warehouse at ``root`` (see the module docstring) under the writer lock.

    Raises `KneuronError` when another writer holds the lock, the warehouse is read-only or full (nothing
    changes), or a file to merge is missing or does not match its commit record (run ``kneuron verify
    --repair`` first). dry_run: plan and report, write nothing.
    """
    if target_rows < 1:
        raise KneuronError(f"--target-rows must be >= 1, got {target_rows}")
    with open_warehouse(root, create=True) as wh:
        records = wh.batches
        plans = plan_compaction(records, target_rows)
        before = [entry for record in records for entry in record.files]
        result = CompactResult(root=str(wh.root), batch_id=None, batches_replaced=len(records),
                               files_before=len(before), files_after=len(before),
                               files_merged=sum(len(group) for plan in plans for group in plan.merge),
                               rollups_rebuilt=[partition_key(p.partition) for p in plans if p.rollup_from],
                               bytes_before=sum(entry.bytes for entry in before), bytes_after=0)
        if dry_run or not any(plan.changes for plan in plans):
            result.files_after = sum(len(p.keep) + len(p.merge) + bool(p.rollup_from) for p in plans)
            result.bytes_after = result.bytes_before
            return result
        batch = wh.batch()
        batch.replaces = [record.batch_id for record in records]
        copies = copies_in(records)
        for parent in PARENTS:  # copies of every run and evaluation, and of the sets other batches named
            every = {key[0] for key in wh._keys[parent]} if spec_of(parent).key_per_row else set()
            batch.refer(parent, set(copies[parent]) | every)
        try:
            for plan in plans:
                _write_group(wh, batch, plan, log)
        except OSError as exc:
            batch.abort()
            raise write_error(wh.root, exc.filename or wh.root, exc) from None
        except BaseException:
            batch.abort()
            raise
        with deferred_signals():  # the commit and its clean-up as one step: a signal waits until both are done
            record = batch.commit()
            assert record is not None
            result.batch_id = record.batch_id
            result.files_after = len(record.files)
            result.bytes_after = sum(entry.bytes for entry in record.files)
            result.removed = _clean_up(wh, records, record)
        return result


def _write_group(wh: Warehouse, batch: Any, plan: GroupPlan, log: Log | None) -> None:
    """Stage one group's files in ``batch``: kept files as they are, merged and rollup files written anew."""
    spec = spec_of(plan.table)
    for _, entry in plan.keep:
        batch.keep(entry)
    if plan.rollup_from:
        parts = [rollup_rows(table) for table in _read_all(wh, plan.rollup_from)]
        batch.write_parts(spec, plan.partition, [merge_rollups(parts)], [])
        return
    for files in plan.merge:
        if plan.table == "neuron_rollup":
            batch.write_parts(spec, plan.partition, [merge_rollups(_read_all(wh, files))], [])
            continue
        keys = sorted({tuple(key) for _, entry in files for key in entry.keys})
        batch.write_parts(spec, plan.partition, _read_all(wh, files), [list(key) for key in keys])
    if log and plan.merge:
        log(f"compact: {plan.table} {plan.partition}: {sum(len(g) for g in plan.merge)} files -> {len(plan.merge)}")


def _read_all(wh: Warehouse, files: list[tuple[str, FileRecord]]) -> Iterator[pa.Table]:
    """The rows of ``files`` one file at a time, each checked against its commit record's size and sha256."""
    for batch_id, entry in files:
        path = wh.root / entry.path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KneuronError(f"cannot compact: committed file {path} ({entry.table}, batch {batch_id}) is missing; "
                               "run `kneuron verify --repair` first") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != entry.bytes or (entry.sha256 is not None and digest != entry.sha256):
            raise damaged_file_error(path, entry.table, batch_id, "its bytes do not match its commit record; "
                                     "compaction refuses to copy it")
        table = pq.ParquetFile(pa.BufferReader(data)).read()
        if table.num_rows != entry.rows:
            raise damaged_file_error(path, entry.table, batch_id, f"{table.num_rows} rows, its record says "
                                     f"{entry.rows}")
        yield table


def _clean_up(wh: Warehouse, replaced: list[BatchRecord], record: BatchRecord) -> list[str]:
    """After the commit: remove the replaced batches' records, then the files only they named."""
    root = wh.root
    try:
        remove_records(root, [old.batch_id for old in replaced])
        removed = delete_unreferenced(root, [e.path for old in replaced for e in old.files], [record])
    except OSError as exc:  # committed already: the next writer finishes the clean-up
        raise KneuronError(f"compacted warehouse {root} (batch {record.batch_id}) but could not remove the old "
                           f"files ({exc.strerror or exc}); the next writer removes them") from None
    return sorted(path.relative_to(root).as_posix() for path in removed)


def _pack(files: list[tuple[str, FileRecord]], target_rows: int) -> list[list[tuple[str, FileRecord]]]:
    """Consecutive runs of ``files`` of at most ``target_rows`` rows together (a longer file alone)."""
    groups: list[list[tuple[str, FileRecord]]] = []
    rows = 0
    for item in files:
        if groups and rows + item[1].rows <= target_rows:
            groups[-1].append(item)
            rows += item[1].rows
        else:
            groups.append([item])
            rows = item[1].rows
    return [group for group in groups if group]
