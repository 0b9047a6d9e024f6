"""SIGINT and kill -9 at every rename, unlink and fsync of every kind of commit: the warehouse is never broken.

Each commit kind runs once with a counting hook (`kneuron.warehouse.signals.set_hook`) to learn its N commit points;
then,
for every point n and both signals, a forked child runs the same commit on a fresh copy of the warehouse and
sends itself the signal at point n. Afterwards `verify` must be clean (for repair: clean once a second repair has
run) and every table must equal its rows before or after the commit. SIGINT inside a commit is deferred until the
commit ends, so with SIGINT the commit always completes.

The commit kinds: the first ingest batch (with the runs row), a later ingest batch, a select batch (neuron_sets +
set_choices), a suppress batch (evals + captions + scores), compaction, and repair (a damaged batch removed and
its runs row re-created; a damaged file of a compacted record dropped).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from kneuron.engine.errors import KneuronError
from kneuron.warehouse import Warehouse, compact_warehouse, repair, verify_warehouse
from kneuron.warehouse.layout import MANIFEST_DIR
from kneuron.warehouse.signals import points_passed, set_hook
from tests.faults.test_repair_faults import build, eval_rows, files_of, flip, rows, select_rows
from tests.helpers.warehouse_rows import RUN, neuron_rows, run_row, sample_rows

CREATED = dt.datetime(2025, 3, 3, tzinfo=dt.timezone.utc)


def write(parts: list[tuple[str, dict]]) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        with Warehouse.open(root, create=True) as wh, wh.batch() as batch:
            for table, data in parts:
                batch.add(table, data)
    return run


def empty(root: Path) -> None:
    Warehouse.open(root, create=True).close()


def built(root: Path) -> None:
    build(root)


def damaged_first(root: Path) -> None:
    ids = build(root)
    flip(files_of(root, ids["first"], "neuron_stats")[0])


def damaged_compacted(root: Path) -> None:
    build(root)
    compact_warehouse(root)
    (record,) = (root / MANIFEST_DIR).glob("*.json")
    entry = next(e for e in json.loads(record.read_text())["files"] if e["table"] == "samples")
    flip(root / entry["path"])


suppress_parts = [("evals", {"eval_id": ["ev-2"], "run_id": [RUN], "created_at": [CREATED], "config_json": ["{}"]}),
                  *[(table, {**data, "eval_id": ["ev-2"]}) for table, data in eval_rows().items()]]
select_parts = [("neuron_sets", {**select_rows()["neuron_sets"], "set_id": ["set-b"] * 2}),
                ("set_choices", {**select_rows()["set_choices"], "set_id": ["set-b"]})]

# kind -> (how the warehouse before is made, the commit)
KINDS: dict[str, tuple[Callable[[Path], None], Callable[[Path], None]]] = {
    "ingest-first": (empty, write([("runs", run_row()), ("samples", sample_rows("dog", [1])),
                                   ("neuron_stats", neuron_rows("dog", 1, 1))])),
    "ingest": (built, write([("samples", sample_rows("dog", [7])), ("neuron_stats", neuron_rows("dog", 7, 7))])),
    "select": (built, write(select_parts)),
    "suppress": (built, write(suppress_parts)),
    "compact": (built, compact_warehouse),
    "repair": (damaged_first, repair),
    "repair-compacted": (damaged_compacted, repair),
}


def state(root: Path) -> dict[str, list[tuple]] | None:
    """Every table's rows; None where the views cannot be read (the damaged warehouse before a repair)."""
    try:
        return rows(root)
    except KneuronError:
        return None


def run_in_child(root: Path, commit: Callable[[Path], None], signum: int, nth: int) -> int:
    """Fork; the child runs ``commit`` and sends itself ``signum`` at commit point ``nth``. Its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 0
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)

            def hook(action: str, path: Path) -> None:
                if points_passed() == nth:
                    os.kill(os.getpid(), signum)

            set_hook(hook)
            commit(root)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("kind", list(KINDS))
def test_signal_at_every_commit_point_leaves_before_or_after(kind, tmp_path) -> None:
    make, commit = KINDS[kind]
    base = tmp_path / "base"
    make(base)
    before = state(base)
    done = tmp_path / "done"
    shutil.copytree(base, done)
    set_hook(lambda action, path: None)
    try:
        commit(done)
        points = points_passed()
    finally:
        set_hook(None)
    after = state(done)
    assert points >= 3 and after != before
    for signum in (signal.SIGINT, signal.SIGKILL):
        for nth in range(1, points + 1):
            root = tmp_path / f"{signum}-{nth}"
            shutil.copytree(base, root)
            status = run_in_child(root, commit, signum, nth)
            where = f"{signal.Signals(signum).name} at point {nth} of {points}"
            if signum == signal.SIGKILL:
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, where
            else:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, where
            if kind.startswith("repair"):
                repair(root)  # an interrupted repair is finished by the next one
            assert verify_warehouse(root).ok, where
            now = state(root)
            assert now in (before, after), where
            if signum == signal.SIGINT:  # deferred until the commit ended: it completed
                assert now == after, where
            shutil.rmtree(root)
