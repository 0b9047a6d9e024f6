"""Repair never removes more than the damaged batches: the probes of issue 22 on a small warehouse.

The warehouse is shaped like a real one: the first ingest batch holds the run's ``runs`` row with its first
images, later ingest batches hold more images, then a select batch (``neuron_sets`` + ``set_choices``), an
evaluation's ``evals`` row and, in a later batch, its captions and scores. Damage to the first batch (a truncated
file, a same-size byte change, a half-truncated commit record) used to orphan every other batch of the run, so
repair emptied the warehouse; after compaction one damaged file did the same.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from kneuron.warehouse import TABLES, compact_warehouse, connect, repair, verify_warehouse
from kneuron.warehouse.layout import MANIFEST_DIR
from tests.helpers.cli_runner import run_cli
from tests.helpers.warehouse_rows import RUN, commit_plan, files_of, neuron_rows, run_row, sample_rows

UTC = dt.timezone.utc
CREATED = dt.datetime(2025, 3, 2, tzinfo=UTC)


def select_rows() -> dict[str, dict]:
    return {
        "neuron_sets": {"set_id": ["set-a"] * 2, "run_id": [RUN] * 2, "concept": ["dog"] * 2,
                        "method": ["two_stage"] * 2, "params_json": ["{}"] * 2, "layer": [0, 1], "unit": [3, 1],
                        "score": [0.5, 0.25], "created_at": [CREATED] * 2},
        "set_choices": {"run_id": [RUN], "concept": ["dog"], "method": ["two_stage"], "set_id": ["set-a"],
                        "chosen_at": [CREATED]},
    }


def eval_rows() -> dict[str, dict]:
    return {
        "captions": {"eval_id": ["ev-1"], "run_id": [RUN], "set_id": ["set-a"], "method": ["two_stage"],
                     "concept": ["dog"], "group": ["target"], "image_id": [2], "condition": ["suppressed"],
                     "text": ["grass"]},
        "scores": {"eval_id": ["ev-1"], "run_id": [RUN], "set_id": ["set-a"], "method": ["two_stage"],
                   "concept": ["dog"], "group": ["target"], "image_id": [2], "metric": ["bleu"],
                   "reference": ["unmodified"], "value": [0.25]},
    }


def build(root: Path) -> dict[str, str]:
    """Seven batches (see the module docstring); returns name -> batch id."""
    plan = {
        "first": [("runs", run_row()), ("samples", sample_rows("dog", [1])),
                  ("neuron_stats", neuron_rows("dog", 1, 1))],
        "dog2": [("samples", sample_rows("dog", [2])), ("neuron_stats", neuron_rows("dog", 2, 2))],
        "cat3": [("samples", sample_rows("cat", [3])), ("neuron_stats", neuron_rows("cat", 3, 3))],
        "select": list(select_rows().items()),
        "eval": [("evals", {"eval_id": ["ev-1"], "run_id": [RUN], "created_at": [CREATED], "config_json": ["{}"]})],
        "scores": list(eval_rows().items()),
    }
    return commit_plan(root, plan)


def rows(root: Path) -> dict[str, list[tuple]]:
    with connect(root) as con:
        return {table: con.sql(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall() for table in TABLES}



def truncate(path: Path) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def without(before: dict[str, list[tuple]], table: str, image_ids: set[int], column: int) -> list[tuple]:
    """``before[table]`` without the rows whose ``column``-th value is in ``image_ids``."""
    return [row for row in before[table] if row[column] not in image_ids]


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, list[tuple]]]:
    root = tmp_path / "wh"
    ids = build(root)
    return root, ids, rows(root)


@pytest.mark.parametrize("damage", ["truncate", "flip", "record"])
def test_damaged_first_batch_loses_only_that_batch(built, capsys, damage) -> None:
    root, ids, before = built
    if damage == "record":
        record = root / MANIFEST_DIR / f"{ids['first']}.json"
        record.write_text(record.read_text()[: len(record.read_text()) // 2])
    else:
        (truncate if damage == "truncate" else flip)(files_of(root, ids["first"], "neuron_stats")[0])
    assert verify_warehouse(root).bad_batches == [ids["first"]]  # the rest of the run is not orphaned
    code, out, err = run_cli(["verify", "--repair", "--warehouse", str(root)], capsys)
    assert (code, err) == (0, "")
    assert "removed 1 batch(es)" in out and "re-create 1 runs row(s) from copies: run-1" in out
    after = rows(root)
    samples_image = TABLES["samples"].schema.names.index("image_id")
    stats_image = TABLES["neuron_stats"].schema.names.index("image_id")
    assert after["runs"] == before["runs"]
    assert after["samples"] == without(before, "samples", {1}, samples_image)
    assert after["neuron_stats"] == without(before, "neuron_stats", {1}, stats_image)
    for table in ("neuron_sets", "set_choices", "evals", "captions", "scores"):
        assert after[table] == before[table], table
    assert verify_warehouse(root).ok


def test_dry_run_says_what_and_changes_nothing(built, capsys) -> None:
    root, ids, before = built
    flip(files_of(root, ids["first"], "samples")[0])
    listing = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    code, out, err = run_cli(["verify", "--repair", "--dry-run", "--warehouse", str(root)], capsys)
    assert code == 1
    assert f"would remove damaged batch {ids['first']}" in out
    assert "would re-create 1 runs row(s) from copies: run-1" in out
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == listing


def test_runs_row_lost_with_no_copy_needs_force(built, capsys) -> None:
    root, ids, _ = built
    for path in (root / MANIFEST_DIR).glob("*.json"):  # records without copies (written before copies existed)
        record = json.loads(path.read_text())
        record.pop("parents", None)
        path.write_text(json.dumps(record))
    flip(files_of(root, ids["first"], "runs")[0])
    code, out, err = run_cli(["verify", "--repair", "--warehouse", str(root)], capsys)
    assert code == 1 and err.count("\n") == 1 and "nothing changed" in err
    assert f"would ALSO remove intact batch {ids['select']}" in out
    assert all(path.exists() for path in files_of(root, ids["select"]))


def test_interrupted_repair_is_reported_and_finished(built, capsys) -> None:
    root, ids, before = built
    for path in files_of(root, ids["first"]):  # as if repair stopped after removing the batch
        path.unlink()
    (root / MANIFEST_DIR / f"{ids['first']}.json").unlink()
    report = verify_warehouse(root)
    assert [(p.kind, p.table) for p in report.problems] == [("missing_parent", "runs")]
    repair(root)
    assert rows(root)["runs"] == before["runs"] and verify_warehouse(root).ok


@pytest.mark.parametrize("table", ["neuron_stats", "runs", "samples"])
def test_after_compaction_one_damaged_file_loses_only_its_rows(built, capsys, table) -> None:
    root, ids, before = built
    compact_warehouse(root)
    compacted = rows(root)
    assert {k: v for k, v in compacted.items() if k != "neuron_rollup"} == {
        k: v for k, v in before.items() if k != "neuron_rollup"}
    (record_path,) = (root / MANIFEST_DIR).glob("*.json")
    record = json.loads(record_path.read_text())
    entry = next(e for e in record["files"] if e["table"] == table and e["partition"].get("concept") in (None, "cat"))
    flip(root / entry["path"])
    code, out, err = run_cli(["verify", "--repair", "--warehouse", str(root)], capsys)
    assert (code, err) == (0, ""), out
    after = rows(root)
    image = TABLES[table].schema.names.index("image_id") if table != "runs" else None
    for name in TABLES:
        if name == table and table != "runs":
            assert after[name] == without(compacted, name, {3}, image)  # cat 3's rows of this table only
        elif name == "neuron_rollup" and table == "neuron_stats":  # cat's sums go with its image rows
            assert after[name] == [row for row in compacted[name] if row[1] != "cat"]
        else:
            assert after[name] == compacted[name], name
    assert verify_warehouse(root).ok


def test_forged_record_moving_rows_between_partitions_is_caught(built) -> None:
    root, ids, _ = built
    record_path = root / MANIFEST_DIR / f"{ids['cat3']}.json"
    record = json.loads(record_path.read_text())
    entry = next(e for e in record["files"] if e["table"] == "neuron_stats")
    old = root / entry["path"]
    new_relative = entry["path"].replace("concept=cat", "concept=dog")
    (root / new_relative).parent.mkdir(parents=True, exist_ok=True)
    old.rename(root / new_relative)
    entry["path"], entry["partition"]["concept"] = new_relative, "dog"
    record_path.write_text(json.dumps(record))
    (problem,) = verify_warehouse(root).problems
    assert (problem.batch_id, problem.kind) == (ids["cat3"], "partition")
    assert "concept 'cat'" in problem.detail


def test_damaged_evals_and_sets_rows_are_recreated_from_copies(built, capsys) -> None:
    root, ids, before = built
    flip(files_of(root, ids["eval"], "evals")[0])          # the evaluation's row, written before its scores
    flip(files_of(root, ids["select"], "neuron_sets")[0])  # the set its scores name
    code, out, err = run_cli(["verify", "--repair", "--warehouse", str(root)], capsys)
    assert (code, err) == (0, "")
    assert "re-create 1 evals row(s) from copies: ev-1" in out and "re-create 2 neuron_sets row(s)" in out
    after = rows(root)
    assert after["evals"] == before["evals"] and after["neuron_sets"] == before["neuron_sets"]
    assert after["set_choices"] == []  # it was in the damaged select batch, and nothing else names it
    for table in ("runs", "samples", "neuron_stats", "captions", "scores"):
        assert after[table] == before[table], table
    assert verify_warehouse(root).ok
