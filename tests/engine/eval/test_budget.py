"""Budget curves and their summary numbers (`kneuron.engine.eval.budget`) on hand-made examples, computed as
documented."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.budget import (
    budget_curves,
    budget_tables,
    check_budgets,
    curve_scores,
    label,
    parse_budgets,
    specificity_area,
    split_label,
    target_within_damage,
)
from kneuron.engine.eval.summary import SUMMARY_SCHEMA


def test_labels_round_trip():
    assert label("two_stage", 8) == "two_stage@8"
    assert split_label("two_stage@8") == ("two_stage", 8)
    assert split_label("random_nonmassive@32") == ("random_nonmassive", 32)
    assert split_label("two_stage") == ("two_stage", None)
    assert split_label("odd@name") == ("odd@name", None)


def test_budgets_are_checked_and_sorted():
    assert parse_budgets("8, 1,2 ,4") == (1, 2, 4, 8)
    assert check_budgets([32, 16]) == (16, 32)
    for text, message in (("1,x", "whole numbers separated by commas"), ("", "whole numbers separated by commas"),
                          ("0,1", r"whole numbers >= 1, got 0"), ("2,2", "budget 2 listed twice")):
        with pytest.raises(KneuronError, match=message):
            parse_budgets(text)
    with pytest.raises(KneuronError, match="whole numbers >= 1"):
        check_budgets([True])


def test_specificity_area_by_hand():
    # gaps 0, .2, .3, .6 at log2 n = 0, 1, 2, 3: trapezoids .1 + .25 + .45 = .8 over a log2 range of 3
    assert specificity_area([1, 2, 4, 8], [0.0, 0.2, 0.4, 0.8], [0.0, 0.0, 0.1, 0.2]) == pytest.approx(0.8 / 3)
    # unequal log steps: budgets 1, 4, 32 (log2 0, 2, 5); gaps .5, .5, -.5 -> (.5*2 + 0*3) / 5
    assert specificity_area([1, 4, 32], [0.5, 0.6, 0.0], [0.0, 0.1, 0.5]) == pytest.approx(1.0 / 5)
    assert specificity_area([4], [0.3], [0.1]) == pytest.approx(0.2)  # one budget: its gap
    assert math.isnan(specificity_area([1, 2], [0.1, float("nan")], [0.0, 0.0]))
    with pytest.raises(ValueError):
        specificity_area([1, 2], [0.1], [0.0, 0.0])


def test_target_within_damage_stops_at_the_first_budget_over_the_limit():
    assert target_within_damage([1, 2, 4, 8], [0.1, 0.2, 0.3, 0.4], [0.0, 0.05, 0.06, 0.01]) == (2, 0.2)
    assert target_within_damage([1, 2], [0.1, 0.2], [0.2, 0.0]) == (None, None)
    assert target_within_damage([1, 2, 4], [0.1, 0.2, 0.3], [0.0, float("nan"), 0.0]) == (1, 0.1)
    assert target_within_damage([1, 2], [0.1, 0.9], [0.0, 0.01]) == (2, 0.9)


def summary_rows(method: str, n: int, target: float, other: float, bleu: float, concept: str = "*") -> list[dict]:
    """The summary rows the curves read (plus one they must ignore) for one (method, budget)."""
    base = {"concept": concept, "method": label(method, n), "before": 1.0, "after": 0.0, "n": 4,
            "n_neurons": float(n)}
    return [
        {**base, "group": "target", "measure": "mention", "reference": "", "drop": target},
        {**base, "group": "other", "measure": "retention", "reference": "", "drop": other},
        {**base, "group": "other", "measure": "bleu4", "reference": "unmodified", "drop": bleu},
        {**base, "group": "other", "measure": "bleu4", "reference": "ground_truth", "drop": 0.9},
        {**base, "group": "other", "measure": "mention", "reference": "", "drop": 0.7},  # the concept on others
    ]


def test_budget_curves_read_target_mentions_and_other_object_mentions():
    rows = (summary_rows("two_stage", 1, 0.0, 0.0, 0.01) + summary_rows("two_stage", 4, 0.4, 0.1, 0.02)
            + summary_rows("random", 1, 0.0, 0.0, 0.0) + summary_rows("random", 4, 0.05, 0.05, 0.03)
            + summary_rows("two_stage", 4, 0.5, 0.0, 0.0, concept="circle"))
    plain = [{**r, "method": "two_stage"} for r in summary_rows("x", 1, 0.9, 0.9, 0.9)]  # not a budget label
    summary = pa.Table.from_pylist(rows + plain, schema=SUMMARY_SCHEMA)
    curves = budget_curves(summary)
    got = [(r["concept"], r["method"], r["budget"], r["target_mention_drop"], r["other_mention_drop"],
            r["other_bleu4_drop"], r["gap"]) for r in curves.to_pylist()]
    assert got == [("*", "random", 1, 0.0, 0.0, 0.0, 0.0), ("*", "random", 4, 0.05, 0.05, 0.03, 0.0),
                   ("*", "two_stage", 1, 0.0, 0.0, 0.01, 0.0),
                   ("*", "two_stage", 4, 0.4, 0.1, 0.02, pytest.approx(0.3)),
                   ("circle", "two_stage", 4, 0.5, 0.0, 0.0, 0.5)]
    assert math.isnan(curves.to_pylist()[0]["other_bertscore_drop"])  # not in the summary
    scores = {r["method"]: r for r in curve_scores(curves).to_pylist()}
    assert scores["two_stage"]["specificity_area"] == pytest.approx(0.15)  # (0 + .3) / 2 * 2 / 2
    assert (scores["two_stage"]["budget_at_5"], scores["two_stage"]["target_at_5"]) == (1, 0.0)
    assert (scores["two_stage"]["max_gap"], scores["two_stage"]["budget_at_max_gap"]) == (pytest.approx(0.3), 4)
    assert scores["random"]["specificity_area"] == 0.0
    assert (scores["random"]["budget_at_5"], scores["random"]["target_at_5"]) == (4, 0.05)
    assert scores["random"]["budget_at_max_gap"] == 1  # ties: the smallest budget
    assert [r["method"] for r in curve_scores(curves, methods=["two_stage"]).to_pylist()] == ["two_stage", "random"]
    assert curve_scores(curves, concept="circle").to_pylist()[0]["specificity_area"] == 0.5
    tables = budget_tables(summary, methods=["two_stage", "random"])
    curve_rows = next(iter(tables.values())).to_pylist()
    assert [(r["method"], r["budget"]) for r in curve_rows] == [("two_stage", 1), ("two_stage", 4), ("random", 1),
                                                                ("random", 4)]
