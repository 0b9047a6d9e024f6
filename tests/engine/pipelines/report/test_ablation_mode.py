"""The report names the ablation mode of the evaluation it shows (in the answer's facts and the suppression
section), read from the evaluation's stored config: a mean-ablation evaluation must not pass for the paper's
zero ablation. Also the queries behind it: ``report_evals`` gives each evaluation's mode, ``zero`` when its config
names none."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kneuron import queries
from kneuron.engine.pipelines.report.pipeline import ReportConfig, build_report
from tests.helpers import report_fixtures
from tests.helpers.report_fixtures import RUN, build, section_html

MEAN = json.dumps({"ablation": {"mode": "mean", "reference_images": [1, 2]}})


class _MeanNewest:
    """A batch that stores the fixture's newer evaluation ("new") with a mean-ablation config."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def add(self, table: str, columns: dict[str, list]) -> Any:
        if table == "evals":
            pairs = zip(columns["eval_id"], columns["config_json"], strict=True)
            columns = {**columns, "config_json": [MEAN if e == "new" else c for e, c in pairs]}
        return self.batch.add(table, columns)


@pytest.fixture(scope="module")
def mean_warehouse(tmp_path_factory, report_world, report_model_dir) -> Path:  # noqa: ANN001
    original = report_fixtures.add_scores
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_fixtures, "add_scores", lambda batch, world: original(_MeanNewest(batch), world))
        return build(tmp_path_factory.mktemp("wh") / "mean", report_world, report_model_dir, with_scores=True)


def test_report_evals_gives_each_evaluations_ablation_mode(mean_warehouse, report_full) -> None:  # noqa: ANN001
    with queries.connect(mean_warehouse) as con:
        rows = queries.run(con, "report_evals", {"run_id": RUN}).to_pylist()
    assert [(r["eval_id"], r["ablation"]) for r in rows] == [("new", "mean"), ("old", "zero")]
    with queries.connect(report_full) as con:  # configs without an ablation: the paper's zero ablation
        rows = queries.run(con, "report_evals", {"run_id": RUN}).to_pylist()
    assert [(r["eval_id"], r["ablation"]) for r in rows] == [("new", "zero"), ("old", "zero")]


@pytest.mark.parametrize("which", ["mean", "zero"])
def test_report_says_which_ablation_its_answer_comes_from(which, mean_warehouse, report_full, tmp_path) -> None:  # noqa: ANN001
    root = mean_warehouse if which == "mean" else report_full
    result = build_report(root, tmp_path / "r", ReportConfig(with_model=False))
    text = result.html.read_text(encoding="utf-8")
    assert f"new ({which} ablation; the latest of this run)" in section_html(text, "answer")
    assert f"1 methods; {which} ablation; 2 evaluation(s) of this run" in section_html(text, "suppression")
