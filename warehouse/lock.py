"""The single-writer lock: an exclusive, non-blocking `fcntl.flock` on ``<root>/.writer.lock``.

flock belongs to an open file description, so a second `WriterLock` on the same warehouse fails whether it is
taken by another process or by the same process through another open. The lock dies with the process (also on
kill -9), so a crash never leaves a stale lock behind. The holder writes its pid into the file, which the error
of a refused writer names. Readers take no lock.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.errors import READ_ONLY_ERRNOS, read_only_error, write_error


class WriterLock:
    """Exclusive writer lock of the warehouse at ``root`` (taken by `acquire`, given back by `release`)."""

    def __init__(self, root: Path, lock_file: Path) -> None:
        self.root = root
        self.lock_file = lock_file
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise `KneuronError`: naming the pid of the process that holds it, or saying that
        the warehouse is read-only when the lock file cannot be opened for writing (EROFS, EACCES, EPERM)."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in READ_ONLY_ERRNOS:
                raise read_only_error(self.root, self.lock_file, exc) from None
            raise KneuronError(f"cannot open the writer lock {self.lock_file}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise KneuronError(
                f"warehouse {self.root} is being written by another process (pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)
            raise write_error(self.root, self.lock_file, exc, batch=False) from None
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (idempotent). The pid is left in the file; only a held flock means anything."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def writer_pid(root: Path, lock_file: Path) -> int | None:
    """The pid of the process that holds the writer lock ``lock_file`` of the warehouse at ``root`` now (0 when
    it wrote none), or None when no process is writing it. Takes and drops a shared lock: never blocks."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
