"""`kneuron.engine.runtime.progress.Progress`: a line at most every ``every_s`` seconds (fake clock), the rate and ETA
in it,
one final line on close."""
from __future__ import annotations

from kneuron.engine.runtime.progress import Progress, format_duration, format_rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_most_every_interval_and_once_at_the_end():
    clock, lines = FakeClock(), list[str]()
    progress = Progress(10, "captions", lines.append, every_s=30.0, clock=clock)
    clock.now += 10
    progress.advance(2)
    assert lines == []  # 10 s < 30 s
    clock.now += 20
    progress.advance()  # 30 s after the start: 3 done, 0.1/s, 7 left
    assert lines == ["captions: 3/10 (0.100/s, ETA 1 min 10 s)"]
    clock.now += 29
    progress.advance(2)
    assert len(lines) == 1  # 29 s after the last line
    clock.now += 1
    progress.advance(0)
    assert lines[-1] == "captions: 5/10 (0.083/s, ETA 1 min 00 s)"
    clock.now += 5
    progress.advance(5)
    progress.close()
    progress.close()  # once only
    progress.advance()  # after close: counted, not logged
    assert lines[-1] == "captions: 10/10 (0.154/s, took 1 min 05 s)" and len(lines) == 3


def test_every_advance_logs_with_a_zero_interval_and_unknown_eta():
    clock, lines = FakeClock(), list[str]()
    with Progress(3, "jobs", lines.append, every_s=0.0, clock=clock) as progress:
        progress.advance(0)
        clock.now += 2
        progress.advance(3)
    assert lines == ["jobs: 0/3 (0.000/s, ETA unknown)", "jobs: 3/3 (1.50/s, ETA 0 s)", "jobs: 3/3 (1.50/s, took 2 s)"]


def test_close_without_progress_and_an_empty_total():
    clock, lines = FakeClock(), list[str]()
    Progress(0, "nothing", lines.append, clock=clock).close()
    assert lines == ["nothing: 0/0 (0.000/s, took 0 s)"]


def test_formats():
    assert [format_duration(s) for s in (0, 0.4, 59.6, 61, 3599, 3600, 7260)] == [
        "0 s", "0 s", "1 min 00 s", "1 min 01 s", "59 min 59 s", "1 h 00 min", "2 h 01 min"]
    assert [format_rate(r) for r in (0.0, 0.1234, 3.456, 250.4)] == ["0.000/s", "0.123/s", "3.46/s", "250/s"]
