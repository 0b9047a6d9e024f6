"""Commits that a signal cannot cut in half: deferred SIGINT/SIGTERM/SIGHUP, and named points for fault tests.

    with deferred_signals():        # a signal arriving inside is delivered when the block ends
        os.replace(temp, final)
        point("rename", final)       # a fault test may stop the process here (see `set_hook`)

Every rename, unlink and fsync of a commit (`Batch.commit`, compaction's clean-up, `repair`) calls `point`
before it acts, so a test can send SIGINT or SIGKILL to the process at each of them in turn and check that the
warehouse is either as before or as after. Outside the main thread signals cannot be handled, and the block
runs as is.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFERRED = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                             getattr(signal, "SIGHUP", None)) if s is not None)

#: env var naming ``<signal>:<n>``: at the n-th commit point of the process, send it that signal (fault tests)
INJECT_ENV = "KNEURON_FAULT_INJECT"

Hook = Callable[[str, Path], None]
_hook: Hook | None = None
_count = 0
_depth = 0


def set_hook(hook: Hook | None) -> None:
    """Call ``hook(action, path)`` at every commit point (None: none); resets the point counter."""
    global _hook, _count
    _hook, _count = hook, 0


def point(action: str, path: Path) -> None:
    """A commit is about to ``action`` (rename, unlink, fsync) ``path``: run the test hook, if any."""
    global _count
    _count += 1
    if _hook is not None:
        _hook(action, path)
        return
    spec = os.environ.get(INJECT_ENV)
    if spec:
        name, _, nth = spec.partition(":")
        if nth.isdigit() and int(nth) == _count:
            os.kill(os.getpid(), getattr(signal, name))


def points_passed() -> int:
    """How many commit points this process has passed since the last `set_hook`."""
    return _count


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver the first that arrived (re-entrant)."""
    global _depth
    if threading.current_thread() is not threading.main_thread() or _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    arrived: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: object) -> None:
        arrived.append(signum)

    for signum in DEFERRED:
        previous[signum] = signal.signal(signum, hold)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])
