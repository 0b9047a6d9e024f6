"""Progress of a long loop as plain log lines, so that a log (a terminal, a file, a batch job's output) shows
that work goes on and when it should end.

    progress = Progress(len(images), "suppress captions", log)
    for batch in batches:
        ...
        progress.advance(len(batch))
    progress.close()

``advance`` logs ``label: done/total (rate/s, ETA ...)`` when at least ``every_s`` seconds have passed since
the last line (or since the start); ``close`` logs the final line once, ``label: done/total (rate/s, took ...)``.
The same lines go to a terminal and to a file: no bars, no carriage returns. Compute-level: no storage imports.
"""
from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"2 h 07 min"`` (rounded to whole seconds)."""
    total = max(0, int(round(seconds)))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_rate(rate: float) -> str:
    """Items per second with a precision that suits the size (``"0.125/s"``, ``"3.40/s"``, ``"120/s"``)."""
    if rate >= 100:
        return f"{rate:.0f}/s"
    if rate >= 1:
        return f"{rate:.2f}/s"
    return f"{rate:.3f}/s"


class Progress:
    """Counts finished items of a known total and logs a line at most every ``every_s`` seconds.

    total: items expected. label: what is counted (the start of every line). log: where lines go.
    every_s: least seconds between two lines from `advance`. clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(self, total: int, label: str, log: Callable[[str], None], every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = int(total)
        self.label = label
        self.log = log
        self.every_s = float(every_s)
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_line = self.started
        self._closed = False

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more finished items; log a line if ``every_s`` seconds have passed since the last one."""
        self.done += int(n)
        now = self.clock()
        if not self._closed and now - self._last_line >= self.every_s:
            self._last_line = now
            self.log(self.line(now))

    def close(self) -> None:
        """Log the final line (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        self.log(self.line(self.clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        """``label: done/total (rate/s, ETA ...)``; ``final``: ``(rate/s, took ...)``."""
        elapsed = max(0.0, now - self.started)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if final:
            tail = f"took {format_duration(elapsed)}"
        elif rate > 0:
            tail = f"ETA {format_duration(max(0, self.total - self.done) / rate)}"
        else:
            tail = "ETA unknown"
        return f"{self.label}: {self.done}/{self.total} ({format_rate(rate)}, {tail})"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Progress", "format_duration", "format_rate"]
