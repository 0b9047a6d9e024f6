"""`kneuron edit`: neurons from a warehouse set (--set, --concept) or given (--neuron); bad input is one line on
stderr, exit code 2 and nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kneuron.engine.interventions.edit import EDIT_FILE
from kneuron.engine.models import load_model
from kneuron.engine.models.fingerprint import model_fingerprint
from tests.helpers.cli_runner import run_cli

#: the run's circle two_stage set (`tests.helpers.report_fixtures.SETS`), as the record lists it
CIRCLE = ["1:7", "2:5", "2:11"]


def _record(out: Path) -> dict:
    return json.loads((out / EDIT_FILE).read_text())


def test_edit_a_set_of_the_warehouse(report_full, report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "erased"
    code, stdout, err = run_cli(["edit", str(out), "--warehouse", str(report_full), "--set", "circle-two_stage"],
                                capsys)
    assert code == 0, err
    assert stdout == (f"wrote {out}: set circle-two_stage (circle, two_stage, 3 neurons) erased in 2 layer(s) of "
                      f"{report_model_dir}; record in {out / EDIT_FILE}\n")
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0] == f"kneuron: copying {report_model_dir} -> {out}"
    assert lines[1].startswith("kneuron: erased 3 neuron(s) in 2 layer(s); copied ")
    assert lines[1].endswith(f" MB into {out}")
    record = _record(out)
    original = load_model(str(report_model_dir))
    assert record["set"] == {"set_id": "circle-two_stage", "run_id": "tiny-run", "concept": "circle",
                             "method": "two_stage", "warehouse": str(report_full),
                             "run_model_hash": model_fingerprint(original)}
    assert record["neurons"] == CIRCLE and record["operation"] == "erase" and record["scale"] == 0.0
    assert record["source"]["model"] == str(report_model_dir)
    erased = load_model(str(out))
    assert not erased.down_proj_weight(2)[:, [5, 11]].any() and not erased.down_proj_weight(1)[:, 7].any()
    assert torch.equal(erased.down_proj_weight(0), original.down_proj_weight(0))


def test_edit_the_current_set_of_a_concept_amplified(report_full, report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "amplified"
    code, stdout, err = run_cli(["edit", str(out), "--warehouse", str(report_full), "--concept", "circle",
                                 "--scale", "2", "--model", str(report_model_dir)], capsys)
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: circle (two_stage, 3 neurons, set circle-two_stage) scaled (scale 2) ")
    record = _record(out)
    assert record["set"]["set_id"] == "circle-two_stage" and record["operation"] == "scale" and record["scale"] == 2
    before, after = load_model(str(report_model_dir)), load_model(str(out))
    assert torch.equal(after.down_proj_weight(2)[:, [5, 11]], before.down_proj_weight(2)[:, [5, 11]] * 2)


def test_edit_given_neurons_and_force(report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "given"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = ["edit", str(out), "--model", str(report_model_dir), "--neuron", "0:1", "--neuron", "2:5", "--neuron", "0:1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err == f"kneuron: error: output folder {out} exists and is not empty (--force replaces it)\n"
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    code, _, err = run_cli(args + ["--force"], capsys)  # not an earlier edit's output: refused
    assert code == 2 and "replaces only an earlier output of this command" in err
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    (out / EDIT_FILE).write_text('{"format": 1}')  # as an earlier `kneuron edit` left it
    code, stdout, err = run_cli(args + ["--force"], capsys)
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: 2 neuron(s) erased in 2 layer(s) of {report_model_dir}")
    assert not (out / "old.txt").exists()
    assert _record(out)["neurons"] == ["0:1", "2:5"] and _record(out)["set"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given"]  # no temporary folder left


@pytest.mark.parametrize("args, message", [
    (["--set", "nope"], "no neuron set 'nope' in run tiny-run"),
    (["--concept", "heart"], "no two_stage neuron set for concept 'heart' in run tiny-run"),
    (["--model", "MODEL", "--neuron", "3:0"], "neuron 3:0 is outside the model (3 layers x 96 units)"),
    (["--model", "MODEL", "--neuron", "0:96"], "neuron 0:96 is outside the model (3 layers x 96 units)"),
    (["--model", "MODEL", "--neuron", "0-1"], "bad neuron '0-1'; expected LAYER:UNIT, e.g. 12:3071"),
    (["--set", "circle-two_stage", "--scale", "nan"], "--scale must be a finite number, got 'nan'"),
    (["--set", "circle-two_stage", "--scale", "inf"], "--scale must be a finite number, got 'inf'"),
    (["--set", "circle-two_stage", "--scale", "big"], "--scale must be a finite number, got 'big'"),
    (["--set", "circle-two_stage", "--scale", "1e300"], "--scale 1e+300 overflows float32 in layer 1's down_proj"),
    (["--neuron", "0:1"], "--neuron needs --model (the model to edit)"),
    ([], "say which neurons with one of --neuron L:U, --set SET_ID or --concept C"),
    (["--set", "circle-two_stage", "--neuron", "0:1"],
     "say which neurons with one of --neuron L:U, --set SET_ID or --concept C (got --neuron, --set)"),
    (["--model", "MODEL", "--neuron", "0:1", "OUT=MODEL"], "overlaps the model folder it edits"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, message, report_full, report_model_dir, tmp_path,  # noqa: ANN001
                                                  capsys) -> None:
    out = tmp_path / "out"
    args = [str(report_model_dir) if a == "MODEL" else a for a in args]
    if "OUT=MODEL" in args:
        args.remove("OUT=MODEL")
        out = report_model_dir / "edited"
    model_files = sorted(p.name for p in report_model_dir.iterdir())
    code, stdout, err = run_cli(["edit", str(out), "--warehouse", str(report_full), *args], capsys)
    assert (code, stdout) == (2, "")
    assert err.startswith("kneuron: error: ") and message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == [] and not out.exists()
    assert sorted(p.name for p in report_model_dir.iterdir()) == model_files


def test_edit_is_listed(capsys) -> None:  # noqa: ANN001
    code, stdout, _ = run_cli(["--help"], capsys)
    assert code == 0 and "edit  " in stdout and "erased or scaled" in stdout
    code, stdout, _ = run_cli(["edit", "--help"], capsys)
    assert code == 0 and "--scale S" in stdout and "--force" in stdout and "--set SET_ID" in stdout
