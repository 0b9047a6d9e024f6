"""What `repair` will do, decided before it does anything: the least removal that makes the warehouse consistent.

    plan = plan_repair(report, records)     # report: `verify`'s problems over these live records
    plan.lines()                            # what it would remove and re-create, for --dry-run
    plan.dependents                         # intact batches it would remove too: needs --force

Units of repair: an ordinary batch (one ingest chunk, one select, one evaluation) is removed whole when any of
its files is bad, since its files were written together. A record with ``replaces`` (written by compaction or by
an earlier repair) merges many batches: it loses only its bad files (a new record keeps the rest). Parent rows
(`kneuron.warehouse.parents`: runs, evals, neuron_sets) that go with a removed batch or file, or that are missing, are
re-created from the copies other records carry. A batch is removed beyond the damaged ones only when it names a
run whose ``runs`` row is gone with no copy anywhere: those are ``dependents``, and repair refuses to remove
them without ``force``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kneuron.warehouse.manifest import BatchRecord
from kneuron.warehouse.parents import PARENTS, copies_in

#: table -> the table derived from its rows per partition (dropped with them: compaction rebuilds it)
DERIVED = {"neuron_stats": "neuron_rollup"}

#: problem kinds that make a file (and its unit of repair) bad; ``orphan_run`` and ``missing_parent`` do not
FILE_KINDS = frozenset({"missing", "size", "checksum", "unreadable", "rows", "partition"})


@dataclass
class RepairPlan:
    """remove: damaged batches removed whole; damaged_records: unreadable commit records (dropped, their files
    collected as leftovers); trim: batch -> its bad files, for records whose units are files; recover: parent
    table -> JSON rows re-created from copies; dependents: intact batches that would be removed too."""

    remove: list[str] = field(default_factory=list)
    damaged_records: list[str] = field(default_factory=list)
    trim: dict[str, list[str]] = field(default_factory=dict)
    recover: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dependents: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether there is nothing to do."""
        return not (self.remove or self.damaged_records or self.trim or self.recover or self.dependents)

    def lines(self) -> list[str]:
        """One line per action, for the terminal."""
        out = [f"drop damaged commit record of batch {b}" for b in self.damaged_records]
        out += [f"remove damaged batch {b}" for b in self.remove]
        out += [f"remove {len(paths)} damaged file(s) of batch {b} (keep its other files): {' '.join(paths)}"
                for b, paths in sorted(self.trim.items())]
        out += [f"re-create {len(rows)} {table} row(s) from copies: "
                + " ".join(sorted({str(row[PARENTS[table]]) for row in rows}))
                for table, rows in sorted(self.recover.items())]
        out += [f"ALSO remove intact batch {b}: it names a run whose runs row is lost (no copy)"
                for b in self.dependents]
        return out


def plan_repair(problems: list[Any], records: dict[str, BatchRecord], damaged: dict[str, str]) -> RepairPlan:
    """The plan for ``records`` (live, by batch id) given verify's ``problems`` and the ``damaged`` records."""
    plan = RepairPlan(damaged_records=sorted(damaged))
    bad_files: dict[str, set[str]] = {}
    for problem in problems:
        if problem.kind in FILE_KINDS and problem.batch_id in records:
            bad_files.setdefault(problem.batch_id, set()).add(problem.path)
    for batch_id, paths in sorted(bad_files.items()):
        record = records[batch_id]
        derived = {(DERIVED[e.table], tuple(sorted(e.partition.items()))) for e in record.files
                   if e.path in paths and e.table in DERIVED}
        paths = paths | {e.path for e in record.files if (e.table, tuple(sorted(e.partition.items()))) in derived}
        if record.replaces and len(paths) < len(record.files):
            plan.trim[batch_id] = sorted(paths)
        else:
            plan.remove.append(batch_id)
    kept = {batch_id: [e for e in record.files if e.path not in plan.trim.get(batch_id, ())]
            for batch_id, record in records.items() if batch_id not in plan.remove}
    copies = copies_in(records.values())
    while True:
        present = {parent: {key[0] for files in kept.values() for e in files if e.table == parent for key in e.keys}
                   for parent in PARENTS}
        referenced: dict[str, set[Any]] = {parent: set() for parent in PARENTS}
        for batch_id, files in kept.items():
            referenced["runs"].update(e.partition["run_id"] for e in files if "run_id" in e.partition)
            for parent, rows in records[batch_id].parents.items():
                if parent in referenced:
                    referenced[parent].update(row.get(PARENTS[parent]) for row in rows)
        missing = {parent: referenced[parent] - present[parent] for parent in PARENTS}
        lost_runs = {run for run in missing["runs"] if run not in copies["runs"]}
        dependents = sorted(batch_id for batch_id, files in kept.items()
                            if any(e.partition.get("run_id") in lost_runs for e in files))
        if not dependents:
            break
        plan.dependents.extend(dependents)
        for batch_id in dependents:
            del kept[batch_id]
    plan.recover = {parent: [row for key in sorted(keys, key=str) if key in copies[parent]
                             for row in copies[parent][key]]
                    for parent, keys in missing.items() if keys & set(copies[parent])}
    return plan
