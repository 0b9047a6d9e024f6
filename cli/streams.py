"""Environment faults at the entry point: each is one line on stderr and an exit code of its own.

- a file system refusing an output (read-only folder, a file where a folder is expected, no such folder): the
  OS error names the path, ``kneuron: error: cannot write PATH: REASON``, exit `EXIT_BAD_INPUT` (2);
- standard output that cannot be written (full device, I/O error) or is closed: one line, `EXIT_OUTPUT` (74,
  sysexits' EX_IOERR), distinct from ``kneuron verify``'s 1 (problems found);
- a reader that went away (``kneuron sql ... | head``: EPIPE): no message, `EXIT_PIPE` (141, as a shell reports
  SIGPIPE).
"""
from __future__ import annotations

import errno
import os
import sys

EXIT_BAD_INPUT = 2
EXIT_OUTPUT = 74
EXIT_PIPE = 141

_STREAM_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EBADF})


def stdout_closed() -> bool:
    """Whether file descriptor 1 is closed (Python then sets ``sys.stdout`` to None)."""
    if sys.stdout is None:
        return True
    try:
        os.fstat(1)
    except OSError:
        return True
    return False


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that flushing what is still buffered at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def flush_stdout() -> None:
    """Flush standard output now, inside the entry point's error handling (not at interpreter exit)."""
    if sys.stdout is not None:
        sys.stdout.flush()


def os_error_exit(exc: OSError) -> tuple[int, str | None]:
    """(exit code, the line for stderr or None) for an OS error that reached the entry point."""
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        silence_stdout()
        return EXIT_PIPE, None
    if exc.filename is None and exc.errno in _STREAM_ERRNOS:
        silence_stdout()
        return EXIT_OUTPUT, f"cannot write the output: {exc.strerror or exc}"
    where = exc.filename if exc.filename is not None else "a file"
    extra = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return EXIT_BAD_INPUT, f"cannot write {where}{extra}: {exc.strerror or exc}"
