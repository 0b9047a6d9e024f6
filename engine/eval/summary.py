"""Aggregate per-image suppression outcomes into the results tables (per concept, method and image group).

Input: one `ImageOutcome` per (concept, method, group, image) (`outcomes_from_rows` joins them from the stored
``captions`` and ``scores`` rows of an evaluation): the unmodified caption (``before``), the caption with the
method's neuron set suppressed (``after``), the concepts annotated in the image, and per (metric, reference) the
score of ``before`` and of ``after`` (reference ``unmodified``: the unmodified caption itself, so ``before``
scores what the metric gives identical strings; ``ground_truth``: the dataset's captions).

Measures, per (concept, method, group), each a mean over the group's images:
- ``bleu4`` / ``rougeL`` / ``bertscore`` against each reference: ``before``, ``after`` and
  ``drop = before - after`` (identical captions give drop 0 exactly);
- ``mention``: share of captions that mention the concept ``k`` (word or synonym, `kneuron.engine.eval.mentions`):
  before, after, drop (in rate units; x100 = points);
- ``retention``: over the (image, other annotated concept c != k) pairs whose ``before`` caption mentions c, the
  share whose ``after`` caption still mentions c (``after``), ``drop = 1 - retention``; ``n`` = number of pairs;
  NaN when there is no such pair.
``specificity`` rows (group ``"specificity"``): ``drop`` on target images minus ``drop`` on other images
(large = the set removes the concept and leaves the rest).

Rows with concept ``"*"`` average the per-concept rows over concepts (each concept weighs the same; NaN values
are left out; ``n`` is summed). The result is a tidy table (`SUMMARY_SCHEMA`); `paper_tables` reshapes the
``"*"`` rows into the methods x (target, other) x (BLEU, ROUGE, BERTScore) layout.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from kneuron.engine.eval.mentions import mentions
from kneuron.engine.eval.metrics import METRICS

REFERENCES: tuple[str, ...] = ("unmodified", "ground_truth")
GROUPS: tuple[str, ...] = ("target", "other")
ALL_CONCEPTS = "*"
UNMODIFIED = "unmodified"  # the method name of the unmodified model's rows
METRIC_LABELS = {"bleu4": "BLEU-4", "rougeL": "ROUGE-L", "bertscore": "BERTScore"}

SUMMARY_SCHEMA = pa.schema([
    ("concept", pa.string()),
    ("method", pa.string()),
    ("group", pa.string()),
    ("measure", pa.string()),
    ("reference", pa.string()),
    ("before", pa.float64()),
    ("after", pa.float64()),
    ("drop", pa.float64()),
    ("n", pa.int64()),
    ("n_neurons", pa.float64()),
])


@dataclass(frozen=True)
class ImageOutcome:
    """One image's captions before/after suppressing one method's set for one concept, and their scores."""

    concept: str
    method: str
    group: str
    image_id: int
    before: str
    after: str
    present: tuple[str, ...] = ()
    scores_before: Mapping[tuple[str, str], float] = field(default_factory=dict)
    scores_after: Mapping[tuple[str, str], float] = field(default_factory=dict)
    n_neurons: int = 0


class HasNeurons(Protocol):
    """A neuron set as `outcomes_from_rows` needs it (e.g. `kneuron.engine.pipelines.sets.StoredSet`): its neurons."""

    @property
    def neurons(self) -> Sized: ...


def outcomes_from_rows(captions: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Any]],
                       concepts_in: Callable[[int], Sequence[str]], sets: Mapping[str, HasNeurons]
                       ) -> list[ImageOutcome]:
    """Join the stored captions and scores of one evaluation into `ImageOutcome` records (suppressed methods only).

    captions / scores: rows of the ``captions`` / ``scores`` tables of one evaluation (the columns of
    ``queries/suppress_eval_captions.sql`` / ``suppress_eval_scores.sql``); method `UNMODIFIED` holds the
    unmodified captions and their scores. concepts_in: the concepts annotated in an image (other-object
    retention). sets: set_id -> the set (its neuron count; a set not given counts 0 neurons). Suppressed
    captions without an unmodified caption of the same (concept, group, image) are left out; NaN scores too.
    """
    before: dict[tuple[str, str, int], str] = {}
    after: dict[tuple[str, str, str, int], tuple[str, str | None]] = {}
    for row in captions:
        if row["method"] == UNMODIFIED:
            before[(row["concept"], row["group"], int(row["image_id"]))] = row["text"]
        else:
            after[(row["concept"], row["method"], row["group"], int(row["image_id"]))] = (row["text"], row["set_id"])
    values: dict[tuple[str, str, str, int], dict[tuple[str, str], float]] = {}
    for row in scores:
        if row["value"] is None or (isinstance(row["value"], float) and math.isnan(row["value"])):
            continue
        key = (row["concept"], row["method"], row["group"], int(row["image_id"]))
        values.setdefault(key, {})[(row["metric"], row["reference"])] = float(row["value"])
    out = []
    for (concept, method, group, image_id), (text, set_id) in sorted(after.items()):
        if (concept, group, image_id) not in before:
            continue
        n_neurons = len(sets[set_id].neurons) if set_id is not None and set_id in sets else 0
        out.append(ImageOutcome(
            concept=concept, method=method, group=group, image_id=image_id,
            before=before[(concept, group, image_id)], after=text, present=tuple(concepts_in(image_id)),
            scores_before=values.get((concept, UNMODIFIED, group, image_id), {}),
            scores_after=values.get((concept, method, group, image_id), {}), n_neurons=n_neurons))
    return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def retention(outcomes: Sequence[ImageOutcome]) -> tuple[float, int]:
    """(share of other-object mentions kept after suppression, number of mentioned pairs before)."""
    kept = total = 0
    for o in outcomes:
        for other in o.present:
            if other == o.concept or not mentions(o.before, other):
                continue
            total += 1
            kept += bool(mentions(o.after, other))
    return (kept / total if total else float("nan")), total


def concept_rows(outcomes: Sequence[ImageOutcome], metrics: Sequence[str] = METRICS,
                 references: Sequence[str] = REFERENCES) -> list[dict]:
    """The summary rows of one (concept, method, group): metrics x references, mention, retention."""
    first = outcomes[0]
    key = {"concept": first.concept, "method": first.method, "group": first.group,
           "n_neurons": float(first.n_neurons)}
    rows: list[dict] = []
    for reference in references:
        for metric in metrics:
            found = [(o.scores_before.get((metric, reference)), o.scores_after.get((metric, reference)))
                     for o in outcomes]
            pairs = [(b, a) for b, a in found if b is not None and a is not None]
            if not pairs:
                continue
            before = _mean([b for b, _ in pairs])
            after = _mean([a for _, a in pairs])
            rows.append({**key, "measure": metric, "reference": reference, "before": before, "after": after,
                         "drop": before - after, "n": len(pairs)})
    before = _mean([float(mentions(o.before, o.concept)) for o in outcomes])
    after = _mean([float(mentions(o.after, o.concept)) for o in outcomes])
    rows.append({**key, "measure": "mention", "reference": "", "before": before, "after": after,
                 "drop": before - after, "n": len(outcomes)})
    kept, n_pairs = retention(outcomes)
    rows.append({**key, "measure": "retention", "reference": "", "before": 1.0 if n_pairs else float("nan"),
                 "after": kept, "drop": 1.0 - kept, "n": n_pairs})
    return rows


def _specificity(rows: list[dict]) -> list[dict]:
    """For each (concept, method, measure, reference) with both groups: target drop minus other drop."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((row["concept"], row["method"], row["measure"], row["reference"]), {})[row["group"]] = row
    out = []
    for (concept, method, measure, reference), groups in by_key.items():
        if "target" in groups and "other" in groups:
            target, other = groups["target"], groups["other"]
            out.append({"concept": concept, "method": method, "group": "specificity", "measure": measure,
                        "reference": reference, "before": float("nan"), "after": float("nan"),
                        "drop": target["drop"] - other["drop"], "n": target["n"] + other["n"],
                        "n_neurons": target["n_neurons"]})
    return out


def _average_over_concepts(rows: list[dict]) -> list[dict]:
    by_key: dict[tuple, list[dict]] = {}
    for row in rows:
        by_key.setdefault((row["method"], row["group"], row["measure"], row["reference"]), []).append(row)
    out = []
    for (method, group, measure, reference), part in by_key.items():
        out.append({"concept": ALL_CONCEPTS, "method": method, "group": group, "measure": measure,
                    "reference": reference,
                    **{name: _nanmean(r[name] for r in part) for name in ("before", "after", "drop", "n_neurons")},
                    "n": int(sum(r["n"] for r in part))})
    return out


def summarize(outcomes: Iterable[ImageOutcome], metrics: Sequence[str] = METRICS,
              references: Sequence[str] = REFERENCES) -> pa.Table:
    """The tidy summary (`SUMMARY_SCHEMA`): per-concept rows, specificity rows, then the ``"*"`` averages."""
    groups: dict[tuple[str, str, str], list[ImageOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.concept, outcome.method, outcome.group), []).append(outcome)
    rows: list[dict] = []
    for key in sorted(groups):
        rows.extend(concept_rows(groups[key], metrics, references))
    rows.extend(_specificity(rows))
    averaged = _average_over_concepts(rows)
    # the average specificity equals the difference of the average drops (means are linear) unless NaNs differ
    table = rows + averaged
    table.sort(key=lambda r: (r["concept"] != ALL_CONCEPTS, r["concept"], r["method"], r["group"],
                              r["measure"], r["reference"]))
    return pa.Table.from_pylist(table, schema=SUMMARY_SCHEMA)


# ------------------------------------------------------------------------------------------------ tables
def _lookup(summary: pa.Table, concept: str) -> dict[tuple[str, str, str, str], dict]:
    return {(r["method"], r["group"], r["measure"], r["reference"]): r
            for r in summary.to_pylist() if r["concept"] == concept}


def _methods(summary: pa.Table, order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(summary.column("method").to_pylist()))
    if order:
        return [m for m in order if m in present] + [m for m in present if m not in order]
    return present


def paper_tables(summary: pa.Table, metrics: Sequence[str] = METRICS, concept: str = ALL_CONCEPTS,
                 methods: Sequence[str] | None = None) -> dict[str, pa.Table]:
    """Wide tables of one concept (default: the average over concepts), one row per method.

    ``scores vs unmodified`` / ``scores vs ground truth``: the score after suppression on target and other
    images (first row: the unmodified model), the mention rate of the concept and the other-object retention.
    ``drops and specificity``: per metric (vs the unmodified captions) and for the mention rate, the drop on
    target, the drop on other and their difference.
    """
    rows = _lookup(summary, concept)
    order = _methods(summary, methods)
    tables: dict[str, pa.Table] = {}
    for reference, title in (("unmodified", "scores vs unmodified captions"),
                             ("ground_truth", "scores vs ground-truth captions")):
        if not any(k[3] == reference for k in rows):
            continue
        out = []
        for method in [UNMODIFIED] + order:
            row: dict[str, object] = {"method": method}
            neurons = [r["n_neurons"] for k, r in rows.items() if k[0] == method]
            size = None if method == UNMODIFIED or not neurons else neurons[0]
            row["neurons"] = int(size) if size is not None and float(size).is_integer() else size
            for group in GROUPS:
                for metric in metrics:
                    source = rows.get((order[0] if method == UNMODIFIED and order else method, group, metric,
                                       reference))
                    value = None if source is None else (source["before"] if method == UNMODIFIED
                                                         else source["after"])
                    row[f"{group} {METRIC_LABELS.get(metric, metric)}"] = value
            for group in GROUPS:
                source = rows.get((order[0] if method == UNMODIFIED and order else method, group, "mention", ""))
                row[f"{group} mention"] = None if source is None else (
                    source["before"] if method == UNMODIFIED else source["after"])
            for group in GROUPS:
                source = rows.get((method, group, "retention", ""))
                row[f"{group} retention"] = None if method == UNMODIFIED or source is None else source["after"]
            out.append(row)
        tables[title] = pa.Table.from_pylist(out)
    spec = []
    for method in order:
        row = {"method": method}
        for measure, reference, label in ([(m, "unmodified", METRIC_LABELS.get(m, m)) for m in metrics]
                                          + [("mention", "", "mention")]):
            for group, name in (("target", "drop target"), ("other", "drop other"),
                                ("specificity", "specificity")):
                source = rows.get((method, group, measure, reference))
                row[f"{label} {name}"] = None if source is None else source["drop"]
        spec.append(row)
    tables["drops and specificity (vs unmodified captions)"] = pa.Table.from_pylist(spec)
    return tables


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(table: pa.Table) -> str:
    """A pyarrow table as a GitHub Markdown table (floats with 3 decimals, None empty)."""
    names = table.column_names
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in table.to_pylist():
        lines.append("| " + " | ".join(_cell(row[name]) for name in names) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(tables: Mapping[str, pa.Table], title: str | None = None) -> str:
    """The tables of `paper_tables` as Markdown sections."""
    parts = [f"# {title}\n"] if title else []
    for name, table in tables.items():
        parts.append(f"## {name}\n\n{markdown_table(table)}")
    return "\n".join(parts)
