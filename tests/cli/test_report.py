"""`kneuron report`: options, what it prints, one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli_runner import run_cli
from tests.helpers.report_fixtures import OLD_SET_ID, build, make_model, make_world, section_html


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:  # noqa: ANN001
    world = make_world(tmp_path_factory.mktemp("world"))
    model_dir = make_model(tmp_path_factory.mktemp("model"))
    return build(tmp_path_factory.mktemp("wh") / "bare", world, model_dir, with_scores=False)


def test_cli_report(bare, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "rep"
    code, stdout, err = run_cli(["report", "--warehouse", str(bare), "--out", str(out), "--images", "0",
                                 "--contrast-images", "2", "--max-concepts", "1"], capsys)
    assert code == 0, err
    assert f"report: {out / 'report.html'}" in stdout
    assert "heatmap contrast (two_stage, 2 images, 1 concepts): lift " in stdout
    assert "two_stage sets shown: circle circle-two_stage, square square-two_stage" in stdout
    assert "heatmap contrast: no stored random baseline set in this run, so no chance level" in stdout
    code, _, err = run_cli(["report", "--warehouse", str(bare), "--run", "nope", "--out", str(out)], capsys)
    assert code == 2 and err.startswith("kneuron: error: unknown run 'nope'")


def test_cli_report_set(bare, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "rep"
    code, stdout, err = run_cli(["report", "--warehouse", str(bare), "--out", str(out), "--no-model",
                                 "--set", OLD_SET_ID], capsys)
    assert code == 0, err
    assert f"two_stage sets shown: circle {OLD_SET_ID}, square square-two_stage" in stdout
    selection = section_html((out / "report.html").read_text(encoding="utf-8"), "selection")
    assert f'<td>{OLD_SET_ID}</td><td class="num">2</td><td>--set</td>' in selection
    code, _, err = run_cli(["report", "--warehouse", str(bare), "--out", str(out), "--no-model",
                            "--set", "circle-stage1_only"], capsys)
    assert code == 2 and err.strip() == ("kneuron: error: set circle-stage1_only is a stage1_only set; the report "
                                         "shows two_stage sets (give --method stage1_only to show it)")
    code, stdout, _ = run_cli(["report", "--help"], capsys)
    assert code == 0 and "--set SET_ID" in stdout
