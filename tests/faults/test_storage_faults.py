"""Storage faults through the `kneuron` entry point: each is one line on stderr, exit code 2, nothing stored lost.

- a committed Parquet file deleted (every query used to fail with a DuckDB IOException traceback);
- a read-only warehouse (EROFS / EACCES on the writer lock or on a write; simulated: root ignores chmod);
- a full disk (ENOSPC) while a batch is written or committed.

Writes go through ``fault-write``, a command this module registers for the test (what every storing command
does: open the writer, write one batch), so the faults are tested without models or other commands.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest

from kneuron import queries
from kneuron.cli.main import COMMANDS
from kneuron.engine.errors import KneuronError
from kneuron.warehouse import TABLES, Warehouse, connect, table_paths
from kneuron.warehouse.layout import LOCK_FILE, MANIFEST_DIR
from tests.helpers.cli_runner import run_cli
from tests.helpers.warehouse_rows import RUN, neuron_rows, run_row, sample_rows


@click.command("fault-write")
@click.option("--warehouse", "warehouse_path", required=True)
def command(warehouse_path: str) -> None:
    """Write one batch (samples and neuron_stats of dog image 9), as every storing command does."""
    with Warehouse.open(warehouse_path, create=True) as wh, wh.batch() as batch:
        batch.add("samples", sample_rows("dog", [9]))
        batch.add("neuron_stats", neuron_rows("dog", 9, seed=9))


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small warehouse (two batches); ``kneuron fault-write`` is registered for the test."""
    monkeypatch.setitem(COMMANDS, "fault-write", (__name__, "Write one test batch."))
    path = tmp_path / "wh"
    with Warehouse.open(path, create=True) as wh:
        with wh.batch() as batch:
            batch.add("runs", run_row())
            batch.add("samples", sample_rows("dog", [1, 2]))
            batch.add("neuron_stats", neuron_rows("dog", 1, seed=1))
        with wh.batch() as batch:
            batch.add("samples", sample_rows("cat", [3]))
            batch.add("neuron_stats", neuron_rows("cat", 3, seed=3))
    return path


def stored_state(root: Path) -> tuple[dict[str, str], dict[str, list[tuple]]]:
    """(sha256 of every file under the warehouse but the lock, every view's rows in a total order)."""
    digests = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE}
    with connect(root) as con:
        rows = {table: con.sql(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall() for table in TABLES}
    return digests, rows


def one_line_error(err: str) -> str:
    """The message of a one-line ``kneuron: error: ...`` stderr (asserts it is exactly that)."""
    assert err.startswith("kneuron: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err[len("kneuron: error: "):-1]


# ---------------------------------------------------------------------- a committed file deleted
@pytest.mark.parametrize("statement", ["SELECT count(*) FROM runs", "SELECT count(*) FROM neuron_stats"])
def test_deleted_file_makes_queries_one_line_naming_it(root, tmp_path, capsys, statement) -> None:
    before = stored_state(root)
    lost = Path(table_paths(root, "neuron_stats")[1])
    aside = tmp_path / "aside.parquet"
    shutil.move(lost, aside)
    code, out, err = run_cli(["sql", "--warehouse", str(root), statement], capsys)
    assert (code, out) == (2, "")
    message = one_line_error(err)
    assert str(lost) in message and "kneuron verify --repair" in message and "is missing" in message
    shutil.move(aside, lost)
    assert stored_state(root) == before


def test_file_deleted_after_the_views_were_made_is_named_too(root, tmp_path, capsys, monkeypatch) -> None:
    lost = Path(table_paths(root, "samples")[0])
    aside = tmp_path / "aside.parquet"
    real_connect = queries.connect

    def connect_then_lose(*args, **kwargs):
        con = real_connect(*args, **kwargs)
        shutil.move(lost, aside)
        return con

    monkeypatch.setattr(queries, "connect", connect_then_lose)
    code, out, err = run_cli(["sql", "--warehouse", str(root), "SELECT count(*) FROM samples"], capsys)
    assert (code, out) == (2, "")
    message = one_line_error(err)
    assert str(lost) in message and "kneuron verify --repair" in message


def test_deleted_file_in_the_python_api(root) -> None:
    lost = Path(table_paths(root, "samples")[1])
    lost.unlink()
    for call in (lambda: connect(root), lambda: Warehouse.open(root).read("samples"),
                 lambda: Warehouse.open(root).check_run_files(RUN)):
        with pytest.raises(KneuronError) as raised:
            call()
        assert str(lost) in str(raised.value) and "\n" not in str(raised.value)
    assert Warehouse.open(root).read("neuron_stats").num_rows == 20  # other tables still read
    assert Warehouse.open(root).finished_pairs(RUN) == {("dog", 1), ("dog", 2)}  # cat 3's samples file is gone


# ---------------------------------------------------------------------- a read-only warehouse
@pytest.mark.parametrize("code_", [errno.EROFS, errno.EACCES])
def test_read_only_lock_is_one_line(root, capsys, monkeypatch, code_) -> None:
    before = stored_state(root)
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if Path(path).name == LOCK_FILE:
            raise OSError(code_, os.strerror(code_), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    for args in (["fault-write", "--warehouse", str(root)], ["verify", "--repair", "--warehouse", str(root)]):
        code, out, err = run_cli(args, capsys)
        assert (code, out) == (2, "")
        message = one_line_error(err)
        assert message.startswith(f"warehouse {root} is read-only (cannot write {root / LOCK_FILE}: ")
    monkeypatch.undo()
    assert stored_state(root) == before


@pytest.mark.parametrize("code_,words", [(errno.EROFS, "is read-only"), (errno.EACCES, "is read-only"),
                                         (errno.ENOSPC, "no space left")])
def test_write_fault_during_a_batch_is_one_line_and_leaves_nothing(root, capsys, monkeypatch, code_, words) -> None:
    before = stored_state(root)

    def failing_write_table(table, where, **kwargs):
        where.write(b"PAR1" + bytes(100))  # part of a file, then the disk is full / the mount is read-only
        raise OSError(code_, os.strerror(code_))

    monkeypatch.setattr(pq, "write_table", failing_write_table)
    code, out, err = run_cli(["fault-write", "--warehouse", str(root)], capsys)
    assert (code, out) == (2, "")
    message = one_line_error(err)
    assert f"warehouse {root}" in message and words in message and ".parquet.tmp" in message
    monkeypatch.undo()
    assert not [p for p in root.rglob("*.tmp")]
    assert stored_state(root) == before
    with Warehouse.open(root, create=True):  # the warehouse is usable as before
        pass
    assert verify_clean(root)


def test_disk_full_at_commit_leaves_nothing(root, capsys, monkeypatch) -> None:
    before = stored_state(root)

    def full_record(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root / MANIFEST_DIR / ".x.json.tmp"))

    monkeypatch.setattr("kneuron.warehouse.batch.write_record", full_record)
    code, out, err = run_cli(["fault-write", "--warehouse", str(root)], capsys)
    assert (code, out) == (2, "")
    message = one_line_error(err)
    assert message.startswith(f"no space left on the device of warehouse {root} while writing {root / MANIFEST_DIR}")
    assert "nothing of this batch was committed" in message
    monkeypatch.undo()
    assert stored_state(root) == before
    assert Warehouse.open(root).finished_pairs(RUN) == {("dog", 1), ("dog", 2), ("cat", 3)}


def test_batch_after_a_failed_write_can_be_written_again(root, monkeypatch) -> None:
    with Warehouse.open(root, create=True) as wh:
        monkeypatch.setattr(pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        with pytest.raises(KneuronError, match="no space left"):
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [9]))
        monkeypatch.undo()
        with wh.batch() as batch:  # the same pair: nothing of the failed batch was claimed
            batch.add("samples", sample_rows("dog", [9]))
        assert ("dog", 9) in wh.finished_pairs(RUN)
    assert verify_clean(root)


def verify_clean(root: Path) -> bool:
    from kneuron.warehouse import verify_warehouse

    return verify_warehouse(root).ok
