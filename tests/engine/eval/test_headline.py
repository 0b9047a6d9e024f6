"""`kneuron.engine.eval.headline`: the answer agrees with the budget section (T - O) where the old mention-specificity
headline did not, never ranks methods that do not differ, and says so when nothing differs from random."""
from __future__ import annotations

import dataclasses

from kneuron.engine.eval.budget import budget_curves, curve_scores
from kneuron.engine.eval.evidence import gap_table, image_matrix
from kneuron.engine.eval.headline import answer
from kneuron.engine.eval.summary import ALL_CONCEPTS, summarize
from tests.engine.eval.test_evidence import synthetic


def old_headline(summary) -> str:  # noqa: ANN001
    """The method the previous report named: the largest mention specificity (the concept word's own drop on its
    images minus its drop on other images)."""
    rows = [r for r in summary.to_pylist() if r["concept"] == ALL_CONCEPTS and r["group"] == "specificity"
            and r["measure"] == "mention"]
    return max(rows, key=lambda r: r["drop"])["method"]


def test_answer_agrees_with_the_budget_section_where_the_old_headline_did_not() -> None:
    # "blunt" removes the concept almost always but also most other objects; "sharp" removes it often and
    # leaves the rest; random barely changes anything
    methods = {"blunt": (0.95, 0.9), "sharp": (0.7, 0.02), "random": (0.05, 0.05)}
    outcomes = synthetic(methods, budgets=(4, 16), n=30, seed=3)
    summary = summarize(outcomes, metrics=("bleu4",))
    scores = {r["method"]: r["specificity_area"] for r in curve_scores(budget_curves(summary)).to_pylist()}
    budget_best = max(scores, key=scores.__getitem__)
    # the labels carry budgets: the old headline ranked labels by the concept word's specificity
    assert old_headline(summary).split("@")[0] == "blunt" and budget_best == "sharp"
    found = answer(gap_table(image_matrix(outcomes, ("bleu4",)), n_boot=400, n_perm=400).to_pylist(),
                   budgets=(4, 16))
    assert found.best == budget_best
    assert found.sentence.startswith("sharp removes the concept most specifically: specificity area of T(n) - O(n)")
    assert "n = 90 target images" in found.sentence and "3 concepts" in found.sentence
    assert found.differs_from_control == ["sharp"]  # blunt: T - O near 0, like random


def test_no_method_differs_from_random_and_none_is_ranked() -> None:
    outcomes = synthetic({"two_stage": (0.1, 0.1), "pan": (0.12, 0.1), "random": (0.1, 0.1)}, n=6, seed=1)
    found = answer(gap_table(image_matrix(outcomes, ("bleu4",)), n_boot=300, n_perm=300).to_pylist())
    assert found.best is None and found.differs_from_control == []
    assert found.sentence.startswith("No method differs from random at 95%: every paired interval of T - O")
    assert "n = 18 target images" in found.sentence


def test_two_methods_above_random_that_overlap_are_not_ranked() -> None:
    outcomes = synthetic({"a": (0.7, 0.05), "b": (0.7, 0.05), "random": (0.05, 0.05)}, n=20, seed=2)
    found = answer(gap_table(image_matrix(outcomes, ("bleu4",)), n_boot=300, n_perm=300).to_pylist())
    assert found.best is None and sorted(found.differs_from_control) == ["a", "b"]
    assert found.sentence.startswith("a, b exceed random in T - O at 95% (paired, Holm); no method exceeds every "
                                     "other, so the methods are not ranked")


def test_undefined_o_is_not_answered() -> None:
    outcomes = synthetic({"two_stage": (0.5, 0.1), "random": (0.1, 0.1)}, n=4)
    no_objects = [dataclasses.replace(o, present=(o.concept,) if o.group == "target" else ()) for o in outcomes]
    found = answer(gap_table(image_matrix(no_objects, ("bleu4",)), n_boot=50, n_perm=50).to_pylist())
    assert found.best is None and found.sentence.endswith("name other objects).")
    assert "Not answered: T - O is undefined" in found.sentence
