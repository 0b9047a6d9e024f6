"""`EvalResult`: what one suppression evaluation did and found, and its tables (averaged over concepts)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from kneuron.engine.eval.budget import budget_tables, split_label
from kneuron.engine.eval.evidence import SPECIFICITY_TITLE, Evidence, specificity_table
from kneuron.engine.eval.metrics import METRICS
from kneuron.engine.eval.summary import paper_tables


@dataclass
class EvalResult:
    """What `run_evaluation` did and found."""

    eval_id: str
    run_id: str
    concepts: list[str]
    methods: list[str]
    summary: pa.Table
    jobs_run: int = 0
    jobs_skipped: int = 0
    notes: list[str] = field(default_factory=list)
    budgets: tuple[int, ...] = ()
    fragility: pa.Table | None = None  # `kneuron.engine.pipelines.suppress.fragility.FRAGILITY_SCHEMA`, when checked
    evidence: Evidence | None = None  # intervals and paired tests (`kneuron.engine.eval.evidence`), as stored

    def tables(self) -> dict[str, pa.Table]:
        """The paper-shaped tables (`kneuron.engine.eval.summary.paper_tables`) of the average over concepts; for a
        budget evaluation the budget curves and the specificity numbers (`kneuron.engine.eval.budget.budget_tables`);
        with the evidence, the T - O table (`kneuron.engine.eval.evidence.specificity_table`)."""
        if self.budgets:
            tables = dict(budget_tables(self.summary, methods=list(dict.fromkeys(split_label(m)[0]
                                                                                  for m in self.methods))))
        else:
            present = set(self.summary.column("measure").to_pylist())
            tables = paper_tables(self.summary, metrics=[m for m in METRICS if m in present], methods=self.methods)
        if self.evidence is not None:
            tables[SPECIFICITY_TITLE] = specificity_table(self.evidence.gaps)
        return tables
