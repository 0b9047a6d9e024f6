"""One-line `KneuronError`s for storage faults: a read-only warehouse, a full disk, a committed file gone bad.

Every message names the warehouse or file and says what to do, so the CLI can print it as is.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from kneuron.engine.errors import KneuronError

READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

REPAIR_HINT = "run `kneuron verify --repair` to drop its batch, then re-run the command that wrote it"


def _reason(exc: OSError) -> str:
    """The OS's words for ``exc`` (``Read-only file system``), or its text when it has no errno."""
    if exc.errno:
        return exc.strerror or os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def read_only_error(root: Path, path: Path | str, exc: OSError) -> KneuronError:
    """The error of a write refused because the warehouse at ``root`` cannot be written (EROFS, EACCES)."""
    return KneuronError(f"warehouse {root} is read-only (cannot write {path}: {_reason(exc)}); "
                        "commands that store results need a writable warehouse directory")


def write_error(root: Path, path: Path | str, exc: OSError, *, batch: bool = True) -> KneuronError:
    """``exc`` (raised while writing ``path`` of the warehouse at ``root``) as a one-line `KneuronError`.

    Read-only file systems and permission errors say the warehouse is read-only; a full disk (or quota) says
    so and that stored data is unchanged (batch=True: also that nothing of the batch was committed). The
    caller must already have removed what it wrote.
    """
    if exc.errno in READ_ONLY_ERRNOS:
        return read_only_error(root, path, exc)
    outcome = "nothing of this batch was committed and stored data is unchanged" if batch else \
        "stored data is unchanged"
    if exc.errno in FULL_ERRNOS:
        return KneuronError(f"no space left on the device of warehouse {root} while writing {path}; {outcome}: "
                            "free space and run it again")
    return KneuronError(f"cannot write {path} in warehouse {root}: {_reason(exc)}; {outcome}")


def missing_file_error(path: Path, table: str, batch_id: str) -> KneuronError:
    """The error for a committed file that is gone."""
    return KneuronError(f"committed warehouse file {path} ({table}, batch {batch_id}) is missing; {REPAIR_HINT}")


def damaged_file_error(path: Path, table: str, batch_id: str, what: str) -> KneuronError:
    """The error for a committed file whose size or content does not match its commit record."""
    return KneuronError(f"committed warehouse file {path} ({table}, batch {batch_id}) is damaged ({what}); "
                        f"{REPAIR_HINT}")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (DuckDB's run over several lines)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
