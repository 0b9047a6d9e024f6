"""The suppression summary (`kneuron.engine.eval.summary`): against a hand computation, NaN retention, the paper-shaped
tables, and `outcomes_from_rows` joining stored caption and score rows."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest

from kneuron.engine.eval.summary import (
    ALL_CONCEPTS,
    ImageOutcome,
    markdown_table,
    outcomes_from_rows,
    paper_tables,
    summarize,
)
from tests.helpers.eval_fixtures import one


def outcome(concept, group, image_id, before, after, present, b_u, a_u, b_g, a_g, method="m"):  # noqa: ANN001
    return ImageOutcome(concept=concept, method=method, group=group, image_id=image_id, before=before, after=after,
                        present=present, scores_before={("bleu4", "unmodified"): b_u, ("bleu4", "ground_truth"): b_g},
                        scores_after={("bleu4", "unmodified"): a_u, ("bleu4", "ground_truth"): a_g}, n_neurons=4)


HAND = [
    outcome("dog", "target", 1, "a dog and a cat on a sofa", "a cat on a sofa", ("dog", "cat"), 1.0, 0.5, 0.4, 0.3),
    outcome("dog", "target", 2, "a dog on grass", "a dog on grass", ("dog",), 1.0, 1.0, 0.2, 0.2),
    outcome("dog", "other", 3, "a cat and a car", "a car", ("cat", "car"), 1.0, 0.6, 0.5, 0.1),
    outcome("dog", "other", 4, "a person", "a person riding", ("person",), 1.0, 0.8, 0.3, 0.3),
    outcome("cat", "target", 3, "a cat and a car", "a car", ("cat", "car"), 1.0, 0.2, 0.5, 0.1),
    outcome("cat", "other", 2, "a dog on grass", "grass", ("dog",), 1.0, 0.4, 0.2, 0.0),
]


def test_summary_equals_hand_computation():
    summary = summarize(HAND, metrics=("bleu4",))
    approx = pytest.approx

    def check(concept, group, measure, reference, before, after, drop, n):  # noqa: ANN001
        row = one(summary, concept=concept, method="m", group=group, measure=measure, reference=reference)
        assert (row["before"], row["after"], row["drop"], row["n"]) == (approx(before, nan_ok=True),
                                                                        approx(after, nan_ok=True), approx(drop), n)

    check("dog", "target", "bleu4", "unmodified", 1.0, 0.75, 0.25, 2)
    check("dog", "target", "bleu4", "ground_truth", 0.3, 0.25, 0.05, 2)
    check("dog", "other", "bleu4", "unmodified", 1.0, 0.7, 0.3, 2)
    check("dog", "other", "bleu4", "ground_truth", 0.4, 0.2, 0.2, 2)
    check("dog", "target", "mention", "", 1.0, 0.5, 0.5, 2)
    check("dog", "other", "mention", "", 0.0, 0.0, 0.0, 2)
    check("dog", "target", "retention", "", 1.0, 1.0, 0.0, 1)  # (image 1, cat): kept
    check("dog", "other", "retention", "", 1.0, 2 / 3, 1 / 3, 3)  # cat lost, car and person kept
    check("dog", "specificity", "bleu4", "unmodified", math.nan, math.nan, 0.25 - 0.3, 4)
    check("dog", "specificity", "mention", "", math.nan, math.nan, 0.5, 4)
    check("cat", "target", "bleu4", "unmodified", 1.0, 0.2, 0.8, 1)
    check("cat", "target", "retention", "", 1.0, 1.0, 0.0, 1)  # (image 3, car): kept
    check("cat", "other", "retention", "", 1.0, 0.0, 1.0, 1)  # (image 2, dog): lost
    check("cat", "other", "mention", "", 0.0, 0.0, 0.0, 1)
    # the "*" rows average the concepts
    check(ALL_CONCEPTS, "target", "bleu4", "unmodified", 1.0, (0.75 + 0.2) / 2, (0.25 + 0.8) / 2, 3)
    check(ALL_CONCEPTS, "other", "retention", "", 1.0, (2 / 3 + 0.0) / 2, (1 / 3 + 1.0) / 2, 4)
    check(ALL_CONCEPTS, "specificity", "bleu4", "unmodified", math.nan, math.nan,
          ((0.25 - 0.3) + (0.8 - 0.6)) / 2, 6)
    assert one(summary, concept=ALL_CONCEPTS, group="target", measure="mention")["n_neurons"] == 4.0


def test_retention_is_nan_without_mentioned_other_objects():
    summary = summarize([outcome("dog", "target", 1, "a dog", "a cat", ("dog", "cat"), 1, 0, 1, 0)], ("bleu4",))
    row = one(summary, concept="dog", group="target", measure="retention")
    assert math.isnan(row["after"]) and row["n"] == 0


def test_paper_tables_layout():
    summary = summarize(HAND + [dataclasses.replace(o, method="random", after=o.before,
                                                    scores_after=o.scores_before) for o in HAND], ("bleu4",))
    tables = paper_tables(summary, metrics=("bleu4",), methods=["random", "m"])
    scores = tables["scores vs unmodified captions"].to_pylist()
    assert [r["method"] for r in scores] == ["unmodified", "random", "m"]
    assert scores[0]["target BLEU-4"] == 1.0 and scores[0]["neurons"] is None
    assert scores[2]["target BLEU-4"] == pytest.approx(0.475) and scores[1]["target BLEU-4"] == 1.0
    assert scores[2]["target mention"] == pytest.approx((0.5 + 0.0) / 2)
    spec = {r["method"]: r for r in tables["drops and specificity (vs unmodified captions)"].to_pylist()}
    assert spec["random"]["BLEU-4 specificity"] == 0.0
    assert spec["m"]["BLEU-4 specificity"] == pytest.approx(((0.25 - 0.3) + (0.8 - 0.6)) / 2)
    text = markdown_table(tables["scores vs ground-truth captions"])
    assert text.splitlines()[0].startswith("| method | neurons | target BLEU-4 |")
    assert "| unmodified |  | 0.400 |" in text  # mean of the dog (0.3) and cat (0.5) before-scores


def test_outcomes_from_rows_joins_captions_scores_and_set_sizes():
    def caption(method, group, image_id, text, set_id=None):  # noqa: ANN001
        return {"concept": "dog", "method": method, "set_id": set_id, "group": group, "image_id": image_id,
                "condition": "unmodified" if method == "unmodified" else "suppressed", "text": text}

    def score(method, group, image_id, reference, value):  # noqa: ANN001
        return {"concept": "dog", "method": method, "group": group, "image_id": image_id, "metric": "bleu4",
                "reference": reference, "value": value}

    captions = [caption("unmodified", "target", 1, "a dog"), caption("unmodified", "other", 2, "a cat"),
                caption("m", "target", 1, "a thing", "s1"), caption("m", "other", 2, "a cat", "s1"),
                caption("m", "target", 9, "no unmodified caption", "s1"), caption("r", "target", 1, "a dog", "gone")]
    scores = [score("unmodified", "target", 1, "unmodified", 1.0), score("m", "target", 1, "unmodified", 0.25),
              score("m", "target", 1, "ground_truth", float("nan")), score("m", "other", 2, "unmodified", None)]
    sets = {"s1": SimpleNamespace(neurons=[(0, 1, None), (2, 3, 0.5)])}
    present = {1: ("dog",), 2: ("cat", "car")}
    outcomes = outcomes_from_rows(captions, scores, lambda i: present.get(i, ()), sets)
    assert [(o.method, o.group, o.image_id) for o in outcomes] == [("m", "other", 2), ("m", "target", 1),
                                                                   ("r", "target", 1)]
    other, target, random = outcomes
    assert (target.before, target.after, target.present, target.n_neurons) == ("a dog", "a thing", ("dog",), 2)
    assert target.scores_before == {("bleu4", "unmodified"): 1.0}
    assert target.scores_after == {("bleu4", "unmodified"): 0.25}  # the NaN score is left out
    assert other.scores_after == {} and other.present == ("cat", "car")
    assert random.n_neurons == 0  # a set that is not given counts 0 neurons
