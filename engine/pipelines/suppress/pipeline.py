"""The suppress step: caption each concept's target and other images with a neuron set zeroed, score the
captions, store everything in the warehouse and summarise it per method.

    result = run_evaluation(load_config("eval.toml"), warehouse_path)

For every concept ``k`` (with a two_stage reference set ``N_k`` in the run) and every method ``M``:

- **reference set** (`kneuron.engine.pipelines.suppress.inputs.reference_sets`): the set given by id
  (``config.sets``), a selection run now (``config.selection``), or the concept's current two_stage set; the
  log names the set used per concept;
- **images** (`kneuron.engine.eval.images.choose_images`, from the run's ``splits`` table): *target* = evaluation
  images of ``k``; *other* = evaluation images of the run's other concepts without ``k``;
- **neuron set**: ``two_stage`` = ``N_k`` itself; a baseline = `kneuron.engine.baselines` at the budget (``|N_k|`` by
  default, ``budget = "same_as:two_stage"``; or a number). A baseline set already in ``neuron_sets`` (same run,
  concept, method and params, hence the same ``set_id``) is reused; a new one (rows by
  `kneuron.queries.selection.set_rows`) is stored with the results;
- **budget evaluation** (``config.budgets``): every method at every budget n, labelled ``"<method>@<n>"``
  (`kneuron.engine.eval.budget`) in ``captions``, ``scores`` and ``neuron_sets`` (so a budget set never becomes a
  concept's current ``two_stage`` set); two_stage at n = the n best stage-2 candidates of C_k
  (`kneuron.engine.pipelines.suppress.budget.BudgetRanking`); a set smaller than n (|C_k| < n) is logged and noted;
- **fragility check** (``config.fragility_images``, optional): every unit of the evaluated sets zeroed alone on a
  few identification images (`kneuron.engine.pipelines.suppress.fragility`); returned and printed, not stored;
- **captions**: greedy, KV cache on, with the set's units replaced at every position and decoding step: zeroed
  (``ablation = "zero"``, the paper), or their reference mean / a donor's activation (``mean`` / ``resample``,
  `kneuron.engine.pipelines.suppress.ablation`; the means stored in ``ablation_means``). Every method still to run for
  a concept is captioned in the same generates (`kneuron.engine.interventions.multiset.caption_under_sets`: rows = set x
  image),
  token for token what each set gives alone; the unmodified captions are made once per image and reused:
  looked up first in memory, then in ``captions`` (condition ``unmodified``, same run, same generation
  settings);
- **scores** (`kneuron.engine.eval.scoring.ScoreCache` over `CaptionScorer`, 0-1): BLEU-4, ROUGE-L F1, BERTScore F1 of
  the suppressed caption against (a) the unmodified caption and (b) the ground-truth captions. The unmodified
  captions are scored against the same references, so every drop is ``before - after``; equal inputs get
  equal values, so an empty set gives a drop of exactly 0.

Warehouse writes (one atomic batch each): per concept the ``unmodified`` captions and scores (method
``unmodified``, no set), then per (concept, method) the suppressed captions, their scores and any new baseline
set; the ``evals`` row comes with the first batch. The ``eval_id`` is a hash of everything that determines the
results, so rerunning the same evaluation resumes it: (concept, method) pairs already stored are skipped.
The summary (`kneuron.engine.eval.summary`) is computed from the stored rows of the evaluation. Progress: a log line
(`kneuron.engine.runtime.progress.Progress`) at most every 30 s while captioning.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import duckdb
import pyarrow as pa

from kneuron import queries
from kneuron.engine.baselines.base import BaselineContext, ReferenceSet
from kneuron.engine.eval.config import REFERENCE_METHOD, EvalConfig, jsonable
from kneuron.engine.eval.images import EvalImages, choose_images
from kneuron.engine.eval.metrics import METRICS, CaptionScorer
from kneuron.engine.eval.scoring import ScoreCache
from kneuron.engine.eval.summary import UNMODIFIED
from kneuron.engine.interventions.ablation import Ablation
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.run import load_evaluation
from kneuron.engine.pipelines.sets import StoredSet, stored_sets
from kneuron.engine.pipelines.suppress.ablation import prepare_ablation
from kneuron.engine.pipelines.suppress.budget import BudgetRanking, method_labels
from kneuron.engine.pipelines.suppress.captioner import (
    plan_captions,
)
from kneuron.engine.pipelines.suppress.edited import EditedModel, open_edited
from kneuron.engine.pipelines.suppress.evaluation import Evaluation, Log, RemoteCaptions
from kneuron.engine.pipelines.suppress.evidence import summarize_and_store
from kneuron.engine.pipelines.suppress.fragility import check_images, fragility_check
from kneuron.engine.pipelines.suppress.inputs import (
    budgets,
    generation_settings,
    hash_of,
    metric_provenance,
    one_run,
    open_dataset,
    open_model,
    reference_sets,
    resolve_concepts,
    run_images,
)
from kneuron.engine.pipelines.suppress.result import EvalResult
from kneuron.engine.pipelines.suppress.resume import captions_to_make, check_stored, done_jobs
from kneuron.engine.runtime.progress import Progress
from kneuron.queries.selection import MASSIVE_K
from kneuron.warehouse import Warehouse, open_warehouse


def run_evaluation(config: EvalConfig, warehouse_path: str | os.PathLike[str] | None = None,
                   adapter: VLMAdapter | None = None, dataset: Any = None, scorer: CaptionScorer | None = None,
                   progress: bool = True, log: Log | None = None, remote: RemoteCaptions | None = None) -> EvalResult:
    """Run (or resume) one suppression evaluation and return its summary (see the module docstring).

    adapter / dataset / scorer: use these instead of loading the run's model, its dataset and a new
    `CaptionScorer` (tests, or a caller that already holds them). log: notes, the reference set of each concept
    and (``progress``) a progress line at most every 30 s. remote: where the captions are made (e.g. a Ray actor
    pool, `kneuron.engine.pipelines.suppress.ray`); the plan, the scores and every write stay here, in job order.
    """
    config.validate()
    open_warehouse(warehouse_path)  # a reader first: a missing warehouse is an error, not created empty
    notes: list[str] = []
    say: Log = log if log is not None else (lambda message: None)

    def note(message: str) -> None:
        notes.append(message)
        say(message)

    with open_warehouse(warehouse_path, create=True) as wh:
        con = queries.connect(wh)
        outside = contextlib.ExitStack()
        try:
            run = _read_run(config, wh, con, say, note)
            opened = _open_inputs(config, con, run, adapter, dataset, progress, say, note)
            key = _evaluation_key(config, run, opened, scorer)
            existing = check_stored(con, key.eval_id, run.run_id, key.identity)
            plan = _plan_jobs(config, con, run, opened, key)
            bar = Progress(plan.total, "suppress: captions", say) if progress and plan.total else None
            evaluation = Evaluation(config, wh, run.run_id, key.eval_id,
                                     None if existing else _eval_row(config, run.run_id, key), opened.adapter,
                                     opened.dataset, ScoreCache(key.scorer, config.metrics), plan.unmodified,
                                     run.sets, plan.ctx, run.budgets, opened.images, say, bar, opened.edited,
                                     opened.ablation)
            if remote is not None and plan.total:
                plan_captions(evaluation, outside.enter_context(remote(config, run.row, opened.ablation)), plan.jobs,
                              plan.done, plan.labels)
            _run_jobs(evaluation, plan)
            if bar is not None:
                bar.close()
            outside.close()
            notes += evaluation.notes
            fragility = (_check_fragility(config, evaluation, run, opened, plan, say, note)
                         if config.fragility_images else None)
        finally:
            outside.close()
            con.close()
        summary, evidence = summarize_and_store(wh, key.eval_id, run.run_id, opened.dataset, run.sets,
                                                config.metrics)
    return EvalResult(eval_id=key.eval_id, run_id=run.run_id, concepts=run.concepts, methods=plan.labels,
                      summary=summary, evidence=evidence, jobs_run=len(plan.jobs) - plan.skipped,
                      jobs_skipped=plan.skipped, notes=notes, budgets=tuple(sorted(config.budgets)),
                      fragility=fragility)


# ---------------------------------------------------------------------- the steps of run_evaluation
@dataclass(frozen=True)
class _Run:
    """The run an evaluation reads: its ``runs`` ``row``, its stored ``sets`` (set_id -> set), the concepts to
    evaluate with their reference (two_stage) sets and baseline budgets."""

    row: dict[str, Any]
    run_id: str
    sets: dict[str, StoredSet]
    references: dict[str, ReferenceSet]
    concepts: list[str]
    budgets: dict[str, int]


@dataclass(frozen=True)
class _Inputs:
    """What an evaluation runs on: the model (and the edited model), the dataset, the run's identification images
    per concept, the chosen evaluation images and the ablation with its identity for the eval id."""

    adapter: VLMAdapter
    edited: EditedModel | None
    dataset: Any
    ident_images: dict[str, list[int]]
    images: EvalImages
    ablation: Ablation
    ablation_identity: dict[str, Any]


@dataclass(frozen=True)
class _EvalKey:
    """What identifies an evaluation: the scorer, the generation settings and their hash (the cache key of
    unmodified captions), everything that determines the results (``identity``) and the ``eval_id``."""

    scorer: CaptionScorer
    generation: dict[str, Any]
    generation_key: str
    identity: dict[str, Any]
    eval_id: str


@dataclass(frozen=True)
class _Plan:
    """The evaluation's jobs: method ``labels``, every (concept, label) job in order, those ``done`` already and how
    many (``skipped``), the captions still to make (``total``), the unmodified captions known, the stage-2 ranking
    and the baselines' context."""

    labels: list[str]
    jobs: list[tuple[str, str]]
    done: set[tuple[str, str]]
    skipped: int
    total: int
    unmodified: dict[int, str]
    ranking: BudgetRanking
    ctx: BaselineContext


def _read_run(config: EvalConfig, wh: Warehouse, con: duckdb.DuckDBPyConnection, say: Log, note: Log) -> _Run:
    """The run, its sets and each concept's reference set (logged) and budget."""
    run = one_run(wh, con, config.run_id)
    run_id = run["run_id"]
    sets = stored_sets(con, run_id)
    references, how = reference_sets(config, wh, con, run_id, sets, note)
    concepts = resolve_concepts(config, references, run_id)
    for concept in concepts:
        say(f"concept {concept!r}: {REFERENCE_METHOD} set {references[concept].set_id} "
            f"({references[concept].size} neurons; {how})")
    sizes = budgets(config, references, concepts)
    return _Run(run, run_id, sets, references, concepts, sizes)


def _open_inputs(config: EvalConfig, con: duckdb.DuckDBPyConnection, run: _Run, adapter: VLMAdapter | None,
                 dataset: Any, progress: bool, say: Log, note: Log) -> _Inputs:
    """Open the model, the edited model and the dataset (unless given), prepare the ablation and choose the
    images; a concept without evaluation images is noted."""
    adapter = adapter if adapter is not None else open_model(config, run.row, say if progress else None)
    edited = open_edited(config.edited_model, adapter, say if progress else None) \
        if config.edited_model else None
    dataset = dataset if dataset is not None else open_dataset(config, run.row)
    eval_images, ident_images = run_images(con, run.run_id)
    ablation, ablation_identity = prepare_ablation(config, adapter, dataset, ident_images, run.concepts, say)
    present: dict[int, tuple[str, ...]] = {}

    def contains(image_id: int, concept: str) -> bool:
        if image_id not in present:
            present[image_id] = tuple(dataset.concepts_in(image_id))
        return concept in present[image_id]

    images = choose_images(config, run.concepts, eval_images, contains)
    for concept in run.concepts:
        if not images.target[concept]:
            note(f"concept {concept!r} has no evaluation images in run {run.run_id!r}")
    return _Inputs(adapter, edited, dataset, ident_images, images, ablation, ablation_identity)


def _evaluation_key(config: EvalConfig, run: _Run, inputs: _Inputs, scorer: CaptionScorer | None) -> _EvalKey:
    """The scorer (a new `CaptionScorer` unless given) and the identity and id of the evaluation."""
    scorer = scorer if scorer is not None else CaptionScorer(config.metric_config)
    generation = generation_settings(inputs.adapter, run.row, config)
    generation_key = hash_of(generation, 16)
    concepts, images = run.concepts, inputs.images
    identity = {"run_id": run.run_id, "config": config.identity(), "concepts": concepts,
                "references": {c: run.references[c].set_id for c in concepts}, "budgets": run.budgets,
                "images": {c: [images.target[c], images.other[c]] for c in concepts},
                "generation_key": generation_key, "bertscore": scorer.model_id}
    if inputs.edited is not None:
        identity["edited"] = inputs.edited.identity()
    if inputs.ablation_identity:  # zero ablation keeps the ids it always had
        identity["ablation"] = inputs.ablation_identity
    eval_id = config.eval_id or f"eval-{hash_of(identity)}"
    return _EvalKey(scorer, generation, generation_key, identity, eval_id)


def _eval_row(config: EvalConfig, run_id: str, key: _EvalKey) -> Callable[[], dict[str, list[Any]]]:
    """The maker of the evaluation's ``evals`` row, called at the first write: metric signatures need a score."""

    def eval_row() -> dict[str, list[Any]]:
        details = {**key.identity, "generation": key.generation, "methods": list(config.methods),
                   "metrics": metric_provenance(key.scorer), "batch_size": config.batch_size}
        return {"eval_id": [key.eval_id], "run_id": [run_id], "created_at": [datetime.now(timezone.utc)],
                "config_json": [json.dumps(details, sort_keys=True, default=jsonable)]}

    return eval_row


def _plan_jobs(config: EvalConfig, con: duckdb.DuckDBPyConnection, run: _Run, inputs: _Inputs, key: _EvalKey
               ) -> _Plan:
    """The jobs and what resuming them needs: the jobs stored already, the cached unmodified captions of the same
    generation settings, the stage-2 ranking and the baselines' context."""
    done = set(done_jobs(con, key.eval_id))
    cached = queries.run(con, "suppress_cached_captions",
                         {"run_id": run.run_id, "generation_key": key.generation_key}).to_pydict()
    unmodified = dict(zip((int(i) for i in cached["image_id"]), cached["text"], strict=True))
    ranking = BudgetRanking(con, run.run_id, {concept: ref.params for concept, ref in run.references.items()})
    ctx = BaselineContext(adapter=inputs.adapter, dataset=inputs.dataset, run_id=run.run_id,
                          ident_images=inputs.ident_images, reference_sets=run.references, seed=config.seed,
                          batch_size=config.batch_size, stage_ranking=ranking, massive_units=ranking.massive)
    labels = method_labels(config)
    jobs = [(c, m) for c in run.concepts if inputs.images.target[c] for m in (UNMODIFIED, *labels)]
    skipped = sum(job in done for job in jobs)
    total = captions_to_make(jobs, done, labels, inputs.images, unmodified)
    return _Plan(labels, jobs, done, skipped, total, unmodified, ranking, ctx)


def _run_jobs(evaluation: Evaluation, plan: _Plan) -> None:
    """Run the jobs not done yet, concept by concept: the unmodified captions (stored unless done), then every
    pending method."""
    for concept in dict.fromkeys(c for c, _ in plan.jobs):
        todo = [m for m in plan.labels if (concept, m) not in plan.done]
        if todo or (concept, UNMODIFIED) not in plan.done:  # every method needs the unmodified captions
            evaluation.run_unmodified(concept, write=(concept, UNMODIFIED) not in plan.done)
        if todo:
            evaluation.run_methods(concept, todo)


def _check_fragility(config: EvalConfig, evaluation: Evaluation, run: _Run, inputs: _Inputs, plan: _Plan,
                     say: Log, note: Log) -> pa.Table:
    """The fragility table of every evaluated set (`fragility_check`); its notes go to ``note``."""
    used = {(c, m): [(a, b) for a, b, _ in evaluation.neuron_set(c, m)[1]]
            for c, m in plan.jobs if m != UNMODIFIED}
    fragility, more = fragility_check(
        inputs.adapter, inputs.dataset, check_images(inputs.ident_images, run.concepts, config.fragility_images,
                                                     config.seed),
        used, plan.ranking.massive(MASSIVE_K), MASSIVE_K, config.batch_size, say)
    for message in more:
        note(message)
    return fragility


def summarize_evaluation(wh: Warehouse, eval_id: str, dataset: Any, sets: Mapping[str, StoredSet] | None = None,
                         metrics: Sequence[str] = METRICS) -> pa.Table:
    """The summary table of a stored evaluation (`kneuron.engine.eval.summary.summarize` over its rows).

    dataset: gives the concepts annotated in each image (other-object retention); sets: set_id -> stored set
    (its neuron count; missing sets count 0 neurons).
    """
    con = queries.connect(wh)
    try:
        return load_evaluation(con, eval_id, dataset, sets or {}, metrics).summary
    finally:
        con.close()


__all__ = ["EvalResult", "run_evaluation", "summarize_evaluation"]
