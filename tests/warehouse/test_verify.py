"""`warehouse.verify_warehouse` / `repair` and `kneuron verify`: checksums, missing, truncated and flipped files,
files that cannot be stat'ed or read, row counts that differ from the record, rows of a run whose runs row is gone,
damaged commit records, old records without checksums."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

from kneuron import warehouse
from kneuron.engine.errors import KneuronError
from kneuron.warehouse import TABLES, Warehouse, connect, repair, verify_warehouse
from kneuron.warehouse.layout import MANIFEST_DIR
from kneuron.warehouse.verify import Problem
from tests.helpers.cli_runner import run_cli
from tests.helpers.warehouse_rows import RUN, commit_plan, files_of, neuron_rows, run_row, sample_rows

RUN2 = "run-2"


def build(root: Path) -> dict[str, str]:
    """A warehouse of five batches; returns name -> batch id.

    runs1: the runs row of run-1; dog: samples + neuron_stats of dog images 1, 2; cat: samples + neuron_stats
    of cat image 3; runs2: the runs row of run-2; dog2: samples + neuron_stats of run-2's dog image 1.
    """
    plan = {
        "runs1": [("runs", run_row())],
        "dog": [("samples", sample_rows("dog", [1, 2])), ("neuron_stats", neuron_rows("dog", 1, seed=1)),
                ("neuron_stats", neuron_rows("dog", 2, seed=2))],
        "cat": [("samples", sample_rows("cat", [3])), ("neuron_stats", neuron_rows("cat", 3, seed=3))],
        "runs2": [("runs", run_row(RUN2))],
        "dog2": [("samples", sample_rows("dog", [1], run_id=RUN2)),
                 ("neuron_stats", neuron_rows("dog", 1, seed=4, run_id=RUN2))],
    }
    return commit_plan(root, plan)



def strip_copies(root: Path) -> None:
    """Drop the parent-row copies from every commit record, as records written before copies existed."""
    for path in (root / MANIFEST_DIR).glob("*.json"):
        record = json.loads(path.read_text())
        record.pop("parents", None)
        path.write_text(json.dumps(record))


def view_rows(root: Path) -> dict[str, list[tuple]]:
    """Every view's rows in a total order."""
    with connect(root) as con:
        return {table: con.sql(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall() for table in TABLES}


def rows_of_batches(tmp_path: Path, names: list[str]) -> dict[str, list[tuple]]:
    """The rows a warehouse holds when only the batches ``names`` of `build` are kept (built afresh)."""
    fresh = tmp_path / "expected"
    ids = build(fresh)
    with Warehouse.open(fresh, create=True) as wh:
        for name, batch_id in ids.items():
            if name not in names:
                wh.remove_batch(batch_id)
    return view_rows(fresh)


def edit_entry(root: Path, batch_id: str, path: Path, **changes: object) -> None:
    """Change fields of the commit record's entry for the file ``path`` of batch ``batch_id``."""
    record_path = root / MANIFEST_DIR / f"{batch_id}.json"
    record = json.loads(record_path.read_text())
    (entry,) = [e for e in record["files"] if e["path"] == path.relative_to(root).as_posix()]
    entry.update(changes)
    record_path.write_text(json.dumps(record))


def flip_bytes(path: Path, offset: int = 40) -> None:
    """Change bytes in the middle of a file without changing its size."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def verify_cli(root: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    return run_cli(["verify", "--warehouse", str(root), *args], capsys)


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "wh"
    return root, build(root)


# ---------------------------------------------------------------------- checksums in the records
def test_records_carry_a_checksum_of_the_bytes_written(built) -> None:
    root, ids = built
    import hashlib

    for record in Warehouse.open(root).batches:
        for entry in record.files:
            data = (root / entry.path).read_bytes()
            assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.bytes == len(data)


# ---------------------------------------------------------------------- verify
def test_clean_warehouse_gives_a_clean_report_and_exit_0(built, capsys) -> None:
    root, ids = built
    report = verify_warehouse(root)
    assert report.ok and report.problems == [] and report.bad_batches == [] and report.batches == 5
    by_table = {summary.table: summary for summary in report.tables}
    assert set(by_table) == set(TABLES)
    assert (by_table["samples"].files, by_table["samples"].rows) == (3, 4)
    assert (by_table["neuron_stats"].files, by_table["neuron_stats"].rows) == (4, 4 * 10)  # one file per add
    assert by_table["set_choices"].files == 0
    code, out, err = verify_cli(root, capsys)
    assert (code, err) == (0, "")
    assert "│ neuron_stats " in out
    assert out.splitlines()[-1] == f"warehouse {root} is clean: 5 batches, 9 files checked"


@pytest.mark.parametrize("damage,kind", [
    ("delete", "missing"),
    ("truncate", "size"),
    ("flip", "checksum"),
])
def test_damaged_file_is_reported_per_table_and_batch(built, capsys, damage, kind) -> None:
    root, ids = built
    target = files_of(root, ids["dog"], "neuron_stats")[1]
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        os.chmod(target, 0o644)
        target.write_bytes(target.read_bytes()[:-10])
    else:
        size = target.stat().st_size
        flip_bytes(target)
        assert target.stat().st_size == size
    report = verify_warehouse(root)
    (problem,) = report.problems
    assert (problem.batch_id, problem.table, problem.path, problem.kind) == (
        ids["dog"], "neuron_stats", target.relative_to(root).as_posix(), kind)
    assert report.bad_batches == [ids["dog"]]
    assert list(report.problems_by_table()) == ["neuron_stats"] and list(report.problems_by_batch()) == [ids["dog"]]
    assert {s.table: s.bad_files for s in report.tables}["neuron_stats"] == 1

    code, out, err = verify_cli(root, capsys)
    assert code == 1
    assert err == "run `kneuron verify --repair` to remove the failing batches\n"
    assert f"warehouse {root}: 1 problem(s) in 1 batch(es) of 5" in out
    assert kind in out and ids["dog"] in out


@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "no-checksum"])
def test_file_whose_row_count_differs_from_its_record_is_a_rows_problem(built, checksum) -> None:
    root, ids = built
    target = files_of(root, ids["dog"], "samples")[0]  # dog images 1, 2: two rows; its bytes are untouched
    edit_entry(root, ids["dog"], target, rows=3, **({} if checksum else {"sha256": None}))
    report = verify_warehouse(root)
    (problem,) = report.problems
    assert problem == Problem(ids["dog"], "samples", target.relative_to(root).as_posix(), "rows",
                              "2 rows, the commit record says 3")
    assert report.bad_batches == [ids["dog"]]
    assert {s.table: (s.rows, s.bad_files) for s in report.tables}["samples"] == (5, 1)  # the record's count


def test_file_that_cannot_be_stat_ed_is_missing_with_the_reason(built) -> None:
    root, ids = built
    target = files_of(root, ids["cat"], "neuron_stats")[0]
    target.unlink()
    target.symlink_to(target.name)  # a link to itself: stat fails with ELOOP, not FileNotFoundError
    (problem,) = verify_warehouse(root).problems
    assert (problem.batch_id, problem.table, problem.path, problem.kind, problem.detail) == (
        ids["cat"], "neuron_stats", target.relative_to(root).as_posix(), "missing",
        f"cannot stat the file: {os.strerror(errno.ELOOP)}")


def test_file_that_fails_while_hashing_is_unreadable(built, monkeypatch) -> None:
    root, ids = built
    target = files_of(root, ids["cat"], "samples")[0]
    real_open = builtins.open

    class FailingRead:
        """A handle of ``target`` whose reads fail as on a bad disk sector."""

        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self) -> FailingRead:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def read(self, size: int = -1) -> bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def open_failing_target(file, *args, **kwargs):
        handle = real_open(file, *args, **kwargs)
        return FailingRead(handle) if isinstance(file, (str, os.PathLike)) and Path(file) == target else handle

    monkeypatch.setattr(builtins, "open", open_failing_target)
    monkeypatch.setattr(io, "open", open_failing_target)  # what Path.open calls
    report = verify_warehouse(root)
    monkeypatch.undo()
    (problem,) = report.problems
    assert (problem.batch_id, problem.table, problem.path, problem.kind, problem.detail) == (
        ids["cat"], "samples", target.relative_to(root).as_posix(), "unreadable",
        f"cannot read the file: {os.strerror(errno.EIO)}")
    assert verify_warehouse(root).ok  # the bytes themselves are fine


def test_rows_of_a_run_whose_runs_row_is_gone_are_reported(built) -> None:
    root, ids = built
    strip_copies(root)  # no copy of run-2's runs row anywhere (tests/faults/test_repair_faults.py: with copies)
    for path in files_of(root, ids["runs2"]):  # the batch that held run-2's runs row, removed by hand
        path.unlink()
    (root / MANIFEST_DIR / f"{ids['runs2']}.json").unlink()
    report = verify_warehouse(root)
    assert report.bad_batches == [ids["dog2"]]
    assert {(p.table, p.kind) for p in report.problems} == {("samples", "orphan_run"), ("neuron_stats", "orphan_run")}
    assert all("run 'run-2'" in p.detail for p in report.problems)


def test_a_failing_runs_batch_fails_the_batches_of_its_run(built) -> None:
    root, ids = built
    strip_copies(root)
    flip_bytes(files_of(root, ids["runs2"])[0])
    report = verify_warehouse(root)
    assert report.bad_batches == sorted([ids["runs2"], ids["dog2"]])
    assert {p.kind for p in report.problems} == {"checksum", "orphan_run"}


def test_old_records_without_checksum_are_verified_by_size_and_rows(built) -> None:
    root, ids = built
    for path in (root / MANIFEST_DIR).glob("*.json"):  # as written before checksums existed
        record = json.loads(path.read_text())
        for entry in record["files"]:
            del entry["sha256"]
        path.write_text(json.dumps(record))
    assert verify_warehouse(root).ok
    assert Warehouse.open(root).finished_pairs(RUN) == {("dog", 1), ("dog", 2), ("cat", 3)}
    assert view_rows(root)["samples"]  # old records stay readable
    target = files_of(root, ids["cat"], "samples")[0]
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")  # same size, footer damaged
    (problem,) = verify_warehouse(root).problems
    assert (problem.batch_id, problem.kind) == (ids["cat"], "unreadable")


def test_damaged_commit_record_is_reported_and_repaired(built, tmp_path) -> None:
    root, ids = built
    cat_files = files_of(root, ids["cat"])
    (root / MANIFEST_DIR / f"{ids['cat']}.json").write_text("{not json")
    with pytest.raises(KneuronError, match=r"damaged warehouse commit record .*kneuron verify --repair"):
        Warehouse.open(root)
    (problem,) = verify_warehouse(root).problems
    assert (problem.batch_id, problem.kind) == (ids["cat"], "damaged_record")
    result = repair(root)
    assert result.removed_batches == [ids["cat"]] and result.after.ok
    assert sorted(result.removed_files) == sorted(p.relative_to(root).as_posix() for p in cat_files)
    assert not any(p.exists() for p in cat_files)
    assert view_rows(root) == rows_of_batches(tmp_path, ["runs1", "dog", "runs2", "dog2"])


# ---------------------------------------------------------------------- repair
def test_repair_removes_exactly_the_failing_batches(built, tmp_path, capsys) -> None:
    root, ids = built
    files_of(root, ids["dog"], "neuron_stats")[0].unlink()                  # missing
    for path in files_of(root, ids["runs2"]):                               # runs row gone
        path.unlink()
    (root / MANIFEST_DIR / f"{ids['runs2']}.json").unlink()
    strip_copies(root)  # run-2's runs row is lost for good: dog2 can only go too
    dog_files = files_of(root, ids["dog"]) + files_of(root, ids["dog2"])

    code, out, err = verify_cli(root, capsys, "--repair")  # more than the damaged batch: refused
    assert code == 1 and "nothing changed" in err and "--force" in err
    assert f"would ALSO remove intact batch {ids['dog2']}" in out
    assert all(path.exists() for path in files_of(root, ids["cat"]))
    code, out, err = verify_cli(root, capsys, "--repair", "--force")
    assert (code, err) == (0, "")
    assert f"removed 2 batch(es) (4 file(s)): {' '.join(sorted([ids['dog'], ids['dog2']]))}" in out
    assert out.splitlines()[-1] == f"warehouse {root} is clean: 2 batches, 3 files checked"
    assert not any(path.exists() for path in dog_files)
    assert sorted(p.stem for p in (root / MANIFEST_DIR).iterdir()) == sorted([ids["runs1"], ids["cat"]])

    code, out, _ = verify_cli(root, capsys)
    assert code == 0 and "is clean" in out
    assert view_rows(root) == rows_of_batches(tmp_path, ["runs1", "cat"])


def test_after_repair_the_pairs_are_unfinished_and_can_be_written_again(built) -> None:
    root, ids = built
    flip_bytes(files_of(root, ids["dog"], "samples")[0])
    assert Warehouse.open(root).finished_pairs(RUN) == {("dog", 1), ("dog", 2), ("cat", 3)}  # same size: counted
    repair(root)
    with Warehouse.open(root, create=True) as wh:
        assert wh.finished_pairs(RUN) == {("cat", 3)}
        wh.check_run_files(RUN)
        with wh.batch() as batch:  # what a resumed ingest does
            batch.add("samples", sample_rows("dog", [1, 2]))
            batch.add("neuron_stats", neuron_rows("dog", 1, seed=1))
        assert wh.finished_pairs(RUN) == {("dog", 1), ("dog", 2), ("cat", 3)}
    assert verify_warehouse(root).ok


def test_repair_of_a_clean_warehouse_changes_nothing(built, capsys) -> None:
    root, ids = built
    before = view_rows(root)
    code, out, err = verify_cli(root, capsys, "--repair")
    assert (code, err) == (0, "") and "removed" not in out
    assert view_rows(root) == before and len(list((root / MANIFEST_DIR).iterdir())) == 5


def test_repair_needs_the_writer_lock(built, capsys) -> None:
    root, ids = built
    files_of(root, ids["cat"])[0].unlink()
    with Warehouse.open(root, create=True):
        code, out, err = verify_cli(root, capsys, "--repair")
    assert (code, out) == (2, "")
    assert err == f"kneuron: error: warehouse {root} is being written by another process (pid {os.getpid()})\n"
    assert len(list((root / MANIFEST_DIR).iterdir())) == 5


# ---------------------------------------------------------------------- cheap checks used by writers and readers
def test_check_run_files_names_the_first_bad_file(built) -> None:
    root, ids = built
    target = files_of(root, ids["dog"], "samples")[0]
    target.unlink()
    wh = Warehouse.open(root)
    wh.check_run_files(RUN2)  # another run's files are fine
    with pytest.raises(KneuronError) as raised:
        wh.check_run_files(RUN)
    message = str(raised.value)
    assert "\n" not in message and str(target) in message and "kneuron verify --repair" in message
    assert message.startswith(f"committed warehouse file {target} (samples, batch {ids['dog']}) is missing")


def test_finished_pairs_leave_out_pairs_whose_samples_file_is_missing(built) -> None:
    root, ids = built
    files_of(root, ids["dog"], "samples")[0].unlink()
    assert Warehouse.open(root).finished_pairs(RUN) == {("cat", 3)}
    assert Warehouse.open(root).finished_pairs(RUN2) == {("dog", 1)}
    with Warehouse.open(root, create=True) as wh:
        assert wh.finished_pairs(RUN) == {("cat", 3)}
        with pytest.raises(KneuronError, match="is missing; run `kneuron verify --repair`"):  # repair first
            with wh.batch() as batch:
                batch.add("samples", sample_rows("dog", [1]))


def test_verify_usage_errors_exit_2(tmp_path, capsys) -> None:
    code, out, err = run_cli(["verify", "--warehouse", str(tmp_path / "nowhere")], capsys)
    assert (code, out) == (2, "") and err == f"kneuron: error: no kneuron warehouse at {tmp_path / 'nowhere'} " \
                                             "(no such directory)\n"
    code, _, err = run_cli(["verify", "--bogus"], capsys)
    assert code == 2 and "No such option" in err and "--bogus" in err
    code, out, _ = run_cli(["verify", "--help"], capsys)
    assert code == 0 and "1 problems found and not" in out and "2 bad input" in out


def test_package_face() -> None:
    assert warehouse.valid_run_id("run-1.a_b") and not warehouse.valid_run_id("bad run")
    assert not warehouse.valid_run_id("-x") and not warehouse.valid_run_id("a" * 129)
    assert callable(warehouse.verify_warehouse) and callable(warehouse.repair)
