"""`kneuron.engine.eval.evidence`: its estimates equal the summary's and the budget section's numbers; paired
differences,
p-values and Holm on hand-made evaluations."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from kneuron.engine.eval.budget import budget_curves, curve_scores, label
from kneuron.engine.eval.evidence import area_weights, gap_table, image_matrix, interval_table, paired_table
from kneuron.engine.eval.summary import ALL_CONCEPTS, ImageOutcome, summarize
from tests.engine.eval.test_summary import HAND

OBJECTS = ("dog", "cat", "car", "person", "tree")


def synthetic(methods: dict[str, tuple[float, float]], budgets: tuple[int, ...] = (), n: int = 12, seed: int = 0
              ) -> list[ImageOutcome]:
    """Captions naming the image's objects; method m drops the concept with chance t and each other object with
    chance o ({method: (t, o)}, the same at every budget); seeded."""
    rng = random.Random(seed)
    out = []
    for concept in ("dog", "cat", "car"):
        for group in ("target", "other"):
            for image in range(n):
                present = [concept] if group == "target" else []
                present += rng.sample([o for o in OBJECTS if o != concept], 2)
                before = "a " + " and a ".join(present)
                for method, (t, o) in methods.items():
                    for budget in budgets or (None,):
                        kept = [p for p in present if rng.random() >= (t if p == concept else o)]
                        after = "a " + " and a ".join(kept) if kept else "nothing"
                        name = method if budget is None else label(method, budget)
                        out.append(ImageOutcome(concept, name, group, 1000 * (group == "other") + image, before,
                                                after, tuple(present),
                                                {("bleu4", "unmodified"): 1.0},
                                                {("bleu4", "unmodified"): len(kept) / len(present)}, 4))
    return out


def test_interval_estimates_equal_the_summary() -> None:
    outcomes = HAND + [dataclasses.replace(o, method="random", after=o.before, scores_after=o.scores_before)
                       for o in HAND]
    summary = {(r["method"], r["group"], r["measure"], r["reference"]): r
               for r in summarize(outcomes, metrics=("bleu4",)).to_pylist() if r["concept"] == ALL_CONCEPTS}
    table = interval_table(image_matrix(outcomes, ("bleu4",)), n_boot=200).to_pylist()
    checked = 0
    for row in table:
        key = (row["method"], row["group"], row["measure"], row["reference"])
        if key in summary:
            assert row["estimate"] == pytest.approx(summary[key]["drop"]), key
            assert row["images_low"] <= row["estimate"] + 1e-12 and row["estimate"] <= row["images_high"] + 1e-12
            checked += 1
    assert checked >= 12
    rate = [r for r in table if r["method"] == "m" and r["measure"] == "mention_rate" and r["group"] == "target"][0]
    assert rate["estimate"] == pytest.approx((0.5 + 0.0) / 2) and (rate["n_images"], rate["n_concepts"]) == (3, 2)
    retention = [r for r in table if r["method"] == "m" and r["measure"] == "retention" and r["group"] == "other"][0]
    assert retention["n_images"] == 4  # object pairs, as the summary counts them


def test_gap_and_area_equal_the_budget_section() -> None:
    outcomes = synthetic({"pan": (0.8, 0.5), "two_stage": (0.6, 0.1), "random": (0.1, 0.1)}, budgets=(1, 4, 16))
    scores = {r["method"]: r for r in curve_scores(budget_curves(summarize(outcomes, metrics=("bleu4",)))).to_pylist()}
    table = gap_table(image_matrix(outcomes, ("bleu4",)), n_boot=300, n_perm=300).to_pylist()
    areas = {r["method"]: r for r in table if r["quantity"] == "area" and r["baseline"] is None}
    for method in ("pan", "two_stage", "random"):
        assert areas[method]["estimate"] == pytest.approx(scores[method]["specificity_area"])
    diff = [r for r in table if (r["method"], r["baseline"], r["quantity"]) == ("two_stage", "random", "area")][0]
    assert diff["estimate"] == pytest.approx(areas["two_stage"]["estimate"] - areas["random"]["estimate"])
    assert diff["images_low"] > 0 and diff["p_value"] < 0.01 and diff["p_holm"] >= diff["p_value"]
    assert (diff["n_target_images"], diff["n_concepts"]) == (36, 3)


def test_identical_methods_do_not_differ() -> None:
    outcomes = synthetic({"a": (0.5, 0.2)}, n=8)
    copy = [dataclasses.replace(o, method="b") for o in outcomes]
    paired = paired_table(image_matrix(outcomes + copy, ("bleu4",)), n_boot=100, n_perm=100).to_pylist()
    assert paired and all(r["difference"] == 0 and r["p_value"] == 1.0 for r in paired)
    assert {(r["method"], r["baseline"]) for r in paired} == {("a", "b"), ("b", "a")}


def test_area_weights_reproduce_the_trapezoids() -> None:
    from kneuron.engine.eval.budget import specificity_area

    gaps = np.array([0.1, 0.4, -0.2, 0.3])
    assert float(area_weights([1, 2, 8, 32]) @ gaps) == pytest.approx(specificity_area([1, 2, 8, 32], gaps, [0] * 4))
    assert area_weights([None]).tolist() == [1.0]
