"""Reads that cannot be silently wrong: a committed file's sha256 is checked the first time it is read.

    check_digests(root, [(batch_id, entry), ...])    # KneuronError naming the first file whose bytes changed

A same-size change of a committed file (one flipped byte) keeps its size, so the per-read stat check
(`Warehouse.file_problem`) cannot see it, and DuckDB reads such a page as other numbers. Here every file's
bytes are hashed (in threads, chunk by chunk) and compared with the sha256 of its commit record, once: the
file's stamp (device, inode, size, mtime and ctime in ns) is then remembered in a small cache per warehouse, and
later reads of an unchanged stamp cost one stat. Any write to a file changes its ctime, which no user tool can
set back, so a changed file is hashed again. The cache lives in ``$KNEURON_CACHE_DIR`` (default
``$XDG_CACHE_HOME/kneuron`` or ``~/.cache/kneuron``), never in the warehouse; when it cannot be written the
stamps are kept for this process only. Files of records made before checksums existed are not hashed.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kneuron.warehouse.errors import damaged_file_error

CHUNK = 1 << 22
#: seconds between two writes of a warehouse's stamp cache (the rest is written at exit)
SAVE_EVERY_S = 2.0
_memory: dict[str, dict[str, list[int]]] = {}
_unsaved: set[Path] = set()
_saved_at: dict[Path, float] = {}
_registered = False


def cache_dir() -> Path:
    """Where verified stamps are kept (see the module docstring)."""
    explicit = os.environ.get("KNEURON_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kneuron"


def _cache_file(root: Path) -> Path:
    return cache_dir() / f"digests-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _load(root: Path) -> dict[str, list[int]]:
    key = str(root)
    if key not in _memory:
        try:
            raw = json.loads(_cache_file(root).read_text(encoding="utf-8"))
            _memory[key] = {path: stamp for path, stamp in raw.items() if isinstance(stamp, list)}
        except (OSError, ValueError, AttributeError):
            _memory[key] = {}
    return _memory[key]


def _save_soon(root: Path) -> None:
    """Write the stamps of ``root`` now if the last write is `SAVE_EVERY_S` old, else at exit (many one-file
    reads in a row then cost one write, not one per file)."""
    global _registered
    if not _registered:
        atexit.register(_save_all)
        _registered = True
    _unsaved.add(root)
    if time.monotonic() - _saved_at.get(root, 0.0) >= SAVE_EVERY_S:
        _save(root, _memory[str(root)])


def _save_all() -> None:
    """Write every warehouse's unsaved stamps (at exit, or when a caller needs them on disk)."""
    for root in list(_unsaved):
        _save(root, _memory.get(str(root), {}))


def _save(root: Path, stamps: dict[str, list[int]]) -> None:
    _unsaved.discard(root)
    _saved_at[root] = time.monotonic()
    path = _cache_file(root)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text(json.dumps(stamps), encoding="utf-8")
        os.replace(temp, path)
    except OSError:
        temp.unlink(missing_ok=True)  # the stamps stay in this process's memory


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (hashlib releases the GIL, so threads hash in parallel)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digests(root: Path, files: Iterable[tuple[str, Any]], threads: int | None = None) -> None:
    """Raise `KneuronError` (one line, naming the file) for the first of ``files`` ((batch id, FileRecord)
    pairs) whose bytes do not hash to its record's sha256; unchanged stamps verified before are skipped."""
    stamps = _load(root)
    todo: list[tuple[str, Any, Path, list[int]]] = []
    for batch_id, entry in files:
        if entry.sha256 is None:
            continue
        path = root / entry.path
        try:
            stamp = _stamp(path.stat())
        except OSError:
            continue  # a missing file is `file_problem`'s to report
        if stamps.get(entry.path) != stamp:
            todo.append((batch_id, entry, path, stamp))
    if not todo:
        return
    workers = threads or min(8, os.cpu_count() or 1, len(todo))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(pool.map(lambda item: _safe_sha(item[2]), todo))
    bad = None
    for (batch_id, entry, path, stamp), digest in zip(todo, digests, strict=True):
        if digest == entry.sha256:
            stamps[entry.path] = stamp
        elif bad is None:
            bad = damaged_file_error(path, entry.table, batch_id, "its bytes do not match the sha256 of its "
                                     "commit record")
    _save_soon(root)
    if bad is not None:
        raise bad


def _safe_sha(path: Path) -> str | None:
    try:
        return sha256_of(path)
    except OSError:
        return None
