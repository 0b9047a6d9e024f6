"""The report's answer from the T - O rows of `kneuron.engine.eval.evidence.gap_table`: which comparison the evaluation
supports, with its interval and n. Pure.

T = drop of the concept's mention rate on its own images; O = share of the other images' object mentions lost
(the budget section's definitions); a method's number is its specificity area over the evaluation's budgets (its
T - O for an evaluation at one budget). A method *differs* from another when the 95 % interval of the paired
difference (images resampled within concepts) excludes 0 and the Holm-adjusted sign-flip p-value is below 0.05.
The answer names one method only when it exceeds every other method so; it never ranks methods that do not
differ.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CONTROL = "random"
ALPHA = 0.05


@dataclass(frozen=True)
class Answer:
    """The sentence, its (label, value) facts, and the machine-readable verdict (``best``: the method that
    exceeds every other at 95 %, else None; ``differs_from_control``: methods whose number differs from the
    control's)."""

    sentence: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    best: str | None = None
    differs_from_control: list[str] = field(default_factory=list)


def number(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.3f}"


def interval(row: Mapping[str, Any], prefix: str = "images") -> str:
    return f"[{number(row[f'{prefix}_low'])}, {number(row[f'{prefix}_high'])}]"


def differs(row: Mapping[str, Any] | None) -> bool:
    """Whether a paired row's difference is nonzero at 95 %: interval excludes 0 and Holm p < `ALPHA`."""
    if row is None or row["images_low"] is None or row["p_holm"] is None or row["p_holm"] != row["p_holm"]:
        return False
    return bool((row["images_low"] > 0 or row["images_high"] < 0) and row["p_holm"] < ALPHA)


def sizes(row: Mapping[str, Any]) -> str:
    return (f"n = {row['n_target_images']} target images, {row['n_other_pairs']} other-object mentions, "
            f"{row['n_concepts']} concepts")


def answer(gaps: Sequence[Mapping[str, Any]], budgets: Sequence[int] = (), control: str = CONTROL) -> Answer:
    """The answer of one evaluation's gap rows (`kneuron.engine.eval.evidence.AREA_SCHEMA` dicts); ``budgets``: the
    evaluation's budgets (empty: one set per method at its concept's budget)."""
    areas = {r["method"]: r for r in gaps if r["quantity"] == "area" and r["baseline"] is None}
    paired = {(r["method"], r["baseline"]): r for r in gaps if r["quantity"] == "area" and r["baseline"] is not None}
    if not areas:
        return Answer("Which method removes the concept most specifically? Not answered: the evaluation has no "
                      "T - O numbers.")
    if all(r["estimate"] is None or r["estimate"] != r["estimate"] for r in areas.values()):
        return Answer("Which method removes the concept most specifically? Not answered: T - O is undefined because "
                      "no other image has an object mention to lose (O needs the run's dataset and captions that "
                      "name other objects).")
    what = (f"specificity area of T(n) - O(n) over budgets {', '.join(map(str, budgets))}" if len(budgets) > 1
            else "T - O")
    facts = [("measure", f"{what}; T = drop of the concept's mention rate on its images, O = share of the other "
                         "images' object mentions lost (the budget section's definitions); 95% intervals resample "
                         "images within concepts (concepts resampled in parentheses); differences are paired on "
                         "the same images, sign-flip p-values Holm-adjusted across each method's baselines")]
    for method, row in areas.items():
        text = f"{number(row['estimate'])} {interval(row)} ({interval(row, 'concepts')}); {sizes(row)}"
        versus = paired.get((method, control))
        if versus is not None:
            text += (f"; minus {control}: {number(versus['estimate'])} {interval(versus)}, "
                     f"Holm p = {versus['p_holm']:.3g}")
        facts.append((method, text))
    best = [m for m in areas if len(areas) > 1 and all(
        differs(paired.get((m, o))) and paired[(m, o)]["estimate"] > 0 for o in areas if o != m)]
    versus_control = [m for m in areas if m != control and differs(paired.get((m, control)))]
    if best:
        m = best[0]
        sentence = (f"{m} removes the concept most specifically: {what} {number(areas[m]['estimate'])} "
                    f"{interval(areas[m])}, above every other method at 95% (paired, Holm); {sizes(areas[m])}.")
    elif control in areas and not versus_control:
        sentence = (f"No method differs from {control} at 95%: every paired interval of {what} against {control} "
                    f"contains 0 or its Holm p >= {ALPHA} ({sizes(areas[control])}).")
    elif control in areas:
        above = [m for m in versus_control if paired[(m, control)]["estimate"] > 0]
        below = [m for m in versus_control if m not in above]
        parts = []
        if above:
            parts.append(f"{', '.join(above)} exceed{'s' if len(above) == 1 else ''} {control}")
        if below:
            parts.append(f"{', '.join(below)} fall{'s' if len(below) == 1 else ''} below {control}")
        sentence = (f"{' and '.join(parts)} in {what} at 95% (paired, Holm); no method exceeds every other, so "
                    f"the methods are not ranked ({sizes(areas[control])}).")
    else:
        sentence = (f"No method exceeds every other in {what} at 95%, so the methods are not ranked (the run has "
                    f"no {control} control).")
    return Answer(sentence, facts, best[0] if best else None, versus_control)


__all__ = ["ALPHA", "Answer", "CONTROL", "answer", "differs"]
