"""`kneuron ls runs|sets|evals`: the rows, and which set is current after selections and a rerun."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

import pytest

from kneuron.engine.pipelines.select import select_sets
from kneuron.queries.selection import SelectionConfig, ThresholdSpec
from tests.helpers.cli_runner import run_cli
from tests.helpers.signal_world import build_warehouse, make_world

AUTO = SelectionConfig(run_id="r1", concepts=("dog",))
TOP3 = SelectionConfig(run_id="r1", concepts=("dog",), stage1=ThresholdSpec.parse("q:0.9"),
                       stage2=ThresholdSpec.parse("top:3"))


def ls(capsys, *args: str) -> list[dict]:  # noqa: ANN001
    code, out, err = run_cli(["ls", *args, "--format", "json"], capsys)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture()
def root(tmp_path):  # noqa: ANN001
    stats, samples = make_world(seed=7)
    path = tmp_path / "wh"
    build_warehouse(path, stats, samples)
    return path


def current_two_stage(rows: list[dict]) -> list[str]:
    return [r["set_id"] for r in rows if r["method"] == "two_stage" and r["current"]]


def test_ls_sets_marks_the_current_set_after_each_selection(root, capsys) -> None:  # noqa: ANN001
    assert ls(capsys, "sets", "--warehouse", str(root)) == []
    first = select_sets(root, AUTO)
    second = select_sets(root, TOP3)
    first_id = next(r["set_id"] for r in first.selection.summary.to_pylist() if r["method"] == "two_stage")
    second_id = next(r["set_id"] for r in second.selection.summary.to_pylist() if r["method"] == "two_stage")
    rows = ls(capsys, "sets", "--warehouse", str(root), "--run", "r1")
    assert {r["set_id"] for r in rows} == set(first.current) | set(second.current)
    assert all(r["run_id"] == "r1" and r["concept"] == "dog" for r in rows)
    assert {r["method"] for r in rows} == {"two_stage", "stage1_only", "stage2_only"}
    assert current_two_stage(rows) == [second_id]
    assert sorted(r["set_id"] for r in rows if r["current"]) == sorted(second.current)
    sizes = {r["set_id"]: r["size"] for r in rows}
    assert sizes[second_id] == 3
    assert sizes[first_id] == next(r["n_selected"] for r in first.selection.summary.to_pylist()
                                   if r["method"] == "two_stage")

    select_sets(root, AUTO)  # rerun of the first selection: a new set_choices row, nothing written
    again = ls(capsys, "sets", "--warehouse", str(root))
    assert len(again) == len(rows) and current_two_stage(again) == [first_id]
    assert sorted(r["set_id"] for r in again if r["current"]) == sorted(first.current)


def test_ls_runs_and_evals(root, capsys) -> None:  # noqa: ANN001
    from kneuron.warehouse import Warehouse

    runs = ls(capsys, "runs", "--warehouse", str(root))
    concepts = ["dog", "it's", "traffic light"]
    assert [(r["run_id"], r["model_name"], r["concepts"], r["pairs_ok"], r["pairs_skipped"]) for r in runs] == [
        ("r2", "tiny", concepts, 15, 3), ("r1", "tiny", concepts, 15, 3)]
    assert runs[0]["created_at"].startswith("2025-01-01")
    assert [r["run_id"] for r in ls(capsys, "runs", "--warehouse", str(root), "--run", "r1")] == ["r1"]
    assert ls(capsys, "evals", "--warehouse", str(root)) == []

    at = datetime(2025, 2, 1, tzinfo=timezone.utc)
    with Warehouse.open(root, create=True) as wh, wh.batch() as batch:
        batch.add("evals", {"eval_id": ["e1", "e0"], "run_id": ["r1", "r2"], "created_at": [at, at],
                            "config_json": ["{}", "{}"]})
        rows = [("unmodified", "unmodified", "dog"), ("two_stage", "suppressed", "dog"),
                ("random", "suppressed", "it's")]
        batch.add("captions", {"eval_id": ["e1"] * 3, "run_id": ["r1"] * 3, "set_id": [None, "s1", "s2"],
                               "method": [r[0] for r in rows], "concept": [r[2] for r in rows],
                               "group": ["target"] * 3, "image_id": [101] * 3, "condition": [r[1] for r in rows],
                               "text": ["a dog"] * 3})
    evals = ls(capsys, "evals", "--warehouse", str(root))
    assert [(e["eval_id"], e["run_id"], e["methods"], e["concepts"]) for e in evals] == [
        ("e0", "r2", [], []), ("e1", "r1", ["random", "two_stage"], ["dog", "it's"])]
    assert [e["eval_id"] for e in ls(capsys, "evals", "--warehouse", str(root), "--run", "r1")] == ["e1"]


def test_ls_formats_and_errors(root, capsys) -> None:  # noqa: ANN001
    select_sets(root, AUTO)
    code, out, err = run_cli(["ls", "sets", "--warehouse", str(root), "--format", "csv"], capsys)
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["set_id", "run_id", "concept", "method", "size", "created_at", "current"]
    assert sorted(r["current"] for r in table) == ["true"] * 3
    code, out, err = run_cli(["ls", "runs", "--warehouse", str(root)], capsys)
    assert code == 0 and "pairs_skipped" in out and "r1" in out and "r2" in out
    code, _, err = run_cli(["ls", "sets", "--warehouse", str(root), "--run", "r9"], capsys)
    assert code == 2 and err.strip() == "kneuron: error: unknown run 'r9'; runs in the warehouse: r2, r1"
    code, _, err = run_cli(["ls", "neurons", "--warehouse", str(root)], capsys)
    assert code == 2 and "'neurons' is not one of 'runs', 'sets', 'evals'" in err
