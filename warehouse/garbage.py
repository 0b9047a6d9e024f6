"""The writer's clean-up: records of replaced batches, files no commit record names, directories left empty.

Order matters for crash safety: a replaced batch's commit record is removed before its files (a record always
names files that exist), and a file is deleted only when no live record names it (a compacted batch may keep an
old batch's file under its old name). Whatever a crash interrupts, the next writer finishes (`collect_garbage`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kneuron.warehouse.layout import DATA_FILE, MANIFEST_DIR, TEMP_FILE
from kneuron.warehouse.manifest import BatchRecord, fsync_dir, remove_records
from kneuron.warehouse.schema import TABLES
from kneuron.warehouse.signals import point


def collect_garbage(root: Path, live: Iterable[BatchRecord], replaced: Iterable[str]) -> list[Path]:
    """Remove the records of ``replaced`` batches, then every writer file (temp or ``part-*.parquet``) that no
    ``live`` record names, and the directories left empty; returns what was removed."""
    gone = sorted(replaced)
    remove_records(root, gone)
    removed = [root / MANIFEST_DIR / f"{batch_id}.json" for batch_id in gone]
    committed = {entry.path for record in live for entry in record.files}
    for table in TABLES:
        table_dir = root / table
        if not table_dir.is_dir():
            continue
        for directory, _subdirs, files in os.walk(table_dir, topdown=False):
            for name in files:
                path = Path(directory) / name
                relative = path.relative_to(root).as_posix()
                if TEMP_FILE.fullmatch(name) or (DATA_FILE.fullmatch(name) and relative not in committed):
                    point("unlink", path)
                    path.unlink()
                    removed.append(path)
            if Path(directory) != table_dir and not os.listdir(directory):
                os.rmdir(directory)
    manifest_dir = root / MANIFEST_DIR
    if manifest_dir.is_dir():
        for path in manifest_dir.glob(".*.json.tmp"):
            path.unlink()
            removed.append(path)
    return removed


def delete_unreferenced(root: Path, paths: Iterable[str], live: Iterable[BatchRecord]) -> list[Path]:
    """Delete the files ``paths`` (relative to ``root``) that no ``live`` record names; fsync their directories
    and remove the directories left empty. Returns the files deleted (a file already gone is skipped)."""
    kept = {entry.path for record in live for entry in record.files}
    removed: list[Path] = []
    for relative in sorted(set(paths) - kept):
        path = root / relative
        try:
            point("unlink", path)
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    for directory in sorted({path.parent for path in removed}):
        fsync_dir(directory)
    remove_empty_dirs(root, {path.parent for path in removed})
    return removed


def remove_empty_dirs(root: Path, directories: Iterable[Path]) -> None:
    """Remove each of ``directories`` and its parents below the table directory while they are empty."""
    for directory in sorted(directories, key=lambda path: len(path.parts), reverse=True):
        current = directory
        while current.parent != root and current.is_dir() and not any(current.iterdir()):
            current.rmdir()
            current = current.parent
