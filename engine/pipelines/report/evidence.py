"""The report's intervals and paired tests: the stored evidence of an evaluation (``evidence_*`` tables, written
by ``kneuron suppress``), or the same tables computed from its stored captions for an evaluation stored before
those tables existed; and the blocks that show them.

Part of `kneuron.engine.pipelines.report.pipeline` (suppression and budget sections, the answer).
"""
from __future__ import annotations

import math
from typing import Any

from kneuron.engine.eval.evidence import Evidence, evidence_tables
from kneuron.engine.pipelines.run import RunReader, StoredEvaluation, stored_evidence
from kneuron.engine.reporting.document import Table, Text, fmt

#: measures shown with intervals in the suppression section: (measure, reference, label)
SHOWN = (("mention", "", "mention drop"), ("retention", "", "other-object mention loss"),
         ("mention_rate", "", "mention rate after"), ("bleu4", "unmodified", "BLEU-4 drop"),
         ("bertscore", "unmodified", "BERTScore drop"))


def load_evidence(run: RunReader, eval_id: str, evaluation: StoredEvaluation) -> tuple[Evidence, str]:
    """(the evidence of ``eval_id``, a note saying where it comes from)."""
    found = stored_evidence(run.con, eval_id)
    if found is not None:
        return found, "Intervals and tests: the stored `evidence_*` rows of this evaluation (`kneuron sql`)."
    return (evidence_tables(evaluation.outcomes, evaluation.metrics),
            "Intervals and tests: computed from the stored captions (this evaluation predates the stored "
            "`evidence_*` tables; same seeds, same numbers).")


def ci(row: dict[str, Any], prefix: str = "images") -> str:
    low, high = row.get(f"{prefix}_low"), row.get(f"{prefix}_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "—"
    return f"[{fmt(low)}, {fmt(high)}]"


def value(x: Any) -> str:
    return fmt(x)


def interval_blocks(evidence: Evidence, methods: list[str], budget: int | None = None) -> list[Table]:
    """The intervals table (every method's drops and rates, target / other / specificity) and the paired
    differences against each baseline."""
    order = {m: i for i, m in enumerate(methods)}
    rows = [r for r in evidence.intervals.to_pylist() if r["budget"] == budget]
    shown = {(m, r): label for m, r, label in SHOWN}
    rows = [r for r in rows if (r["measure"], r["reference"]) in shown]
    rows.sort(key=lambda r: (order.get(r["method"], -1 if r["method"] == "unmodified" else len(order)),
                             [m for m, _, _ in SHOWN].index(r["measure"]), r["group"]))
    table = Table(["method", "measure", "images", "estimate", "95% CI (images)", "95% CI (concepts)", "n",
                   "concepts"],
                  [[r["method"], shown[(r["measure"], r["reference"])], r["group"], value(r["estimate"]), ci(r),
                    ci(r, "concepts"), r["n_images"], r["n_concepts"]] for r in rows],
                  caption="every number of the tables above with its 95% bootstrap intervals (mean over concepts)",
                  notes={"images": "target: the concept's images; other: images without it; specificity: target - "
                                   "other",
                         "95% CI (images)": "images resampled within concepts (the concepts fixed), seeded",
                         "95% CI (concepts)": "concepts resampled with replacement (each with all its images)",
                         "n": "images (other-object mention loss: object mentions before suppression) behind the "
                              "number"}, folded=True)
    paired = [r for r in evidence.paired.to_pylist() if r["budget"] == budget
              and (r["measure"], r["reference"]) in shown and r["measure"] != "mention_rate"]
    paired.sort(key=lambda r: (order.get(r["method"], len(order)), order.get(r["baseline"], len(order)),
                               [m for m, _, _ in SHOWN].index(r["measure"]), r["group"]))
    pairs = Table(["method", "baseline", "measure", "images", "difference", "95% CI (images)",
                   "95% CI (concepts)", "p", "Holm p", "n"],
                  [[r["method"], r["baseline"], shown[(r["measure"], r["reference"])], r["group"],
                    value(r["difference"]), ci(r), ci(r, "concepts"), fmt(r["p_value"]), fmt(r["p_holm"]),
                    r["n_images"]] for r in paired],
                  caption="paired differences, method minus baseline on the same images",
                  notes={"p": "two-sided sign-flip permutation p-value (per-image differences, seeded)",
                         "Holm p": "Holm-adjusted across the method's baselines"}, folded=True)
    return [table, pairs]


def note_block(note: str) -> Text:
    return Text(note)


__all__ = ["SHOWN", "ci", "interval_blocks", "load_evidence", "note_block", "value"]
