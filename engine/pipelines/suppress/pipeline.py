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
from kneuron.engine.baselines.base import BaselineContext, ReferenceSet, ScoredNeuron
from kneuron.engine.baselines.registry import get_baseline
from kneuron.engine.eval.budget import split_label
from kneuron.engine.eval.config import EDITED_METHOD, REFERENCE_METHOD, EvalConfig, jsonable
from kneuron.engine.eval.images import EvalImages, choose_images
from kneuron.engine.eval.metrics import METRICS, CaptionScorer
from kneuron.engine.eval.scoring import ScoreCache
from kneuron.engine.eval.summary import UNMODIFIED
from kneuron.engine.interventions.ablation import Ablation
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.run import load_evaluation
from kneuron.engine.pipelines.sets import StoredSet, stored_sets
from kneuron.engine.pipelines.suppress.ablation import means_rows, prepare_ablation
from kneuron.engine.pipelines.suppress.budget import BudgetRanking, method_labels, short_note
from kneuron.engine.pipelines.suppress.captioner import (
    CaptionEngine,
    PlannedCaptions,
    plan_captions,
    rows_per_generate,
)
from kneuron.engine.pipelines.suppress.edited import EditedModel, open_edited
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
from kneuron.engine.runtime.scoped import seeded_torch
from kneuron.engine.signals.neurons import NeuronSet, as_neuron_set
from kneuron.queries.selection import MASSIVE_K, set_id_of, set_rows
from kneuron.warehouse import Warehouse, open_warehouse

Log = Callable[[str], None]
#: random baselines drawn independently per budget in a budget evaluation (random_nonmassive is nested)
PER_BUDGET_RANDOM = ("random", "random_layer_matched")
Rows = Mapping[str, Sequence[Any]]
#: where captions are made when not in this process: (config, run row, the evaluation's ablation) -> a context
#: giving a `CaptionEngine`
RemoteCaptions = Callable[[EvalConfig, Mapping[str, Any], Ablation],
                          contextlib.AbstractContextManager[CaptionEngine]]


class _Evaluation:
    """State of one evaluation while it runs (model, caches, warehouse writer)."""

    def __init__(self, config: EvalConfig, wh: Warehouse, run_id: str, eval_id: str,
                 eval_row: Callable[[], dict[str, list[Any]]] | None, adapter: VLMAdapter, dataset: Any,
                 scores: ScoreCache, unmodified: dict[int, str], sets: dict[str, StoredSet], ctx: BaselineContext,
                 budgets: Mapping[str, int], images: EvalImages, log: Log, progress: Progress | None,
                 edited: EditedModel | None = None, ablation: Ablation | None = None) -> None:
        self.config, self.wh, self.run_id, self.eval_id = config, wh, run_id, eval_id
        self.eval_row = eval_row
        self.adapter, self.dataset, self.scores = adapter, dataset, scores
        self.unmodified, self.sets, self.ctx, self.budgets, self.images = unmodified, sets, ctx, budgets, images
        self.log, self.progress, self.edited = log, progress, edited
        self.ablation = ablation or Ablation()
        self.notes: list[str] = []  # sets smaller than their budget
        self.generate_kwargs = {} if config.max_new_tokens is None else {"max_new_tokens": config.max_new_tokens}
        self._pixels: tuple[str, dict[int, Any]] | None = None
        self.planned: PlannedCaptions | None = None  # captions made elsewhere (`plan_captions`), in job order
        self._chosen: dict[tuple[str, str], tuple[str, list[ScoredNeuron], pa.Table | None]] = {}

    # -------------------------------------------------------------- inputs
    def pixels(self, concept: str) -> dict[int, Any]:
        """The concept's target and other images (kept while the concept is evaluated)."""
        if self._pixels is None or self._pixels[0] != concept:
            ids = self.images.target[concept] + self.images.other[concept]
            self._pixels = (concept, {i: self.dataset.load_image(i) for i in ids})
        return self._pixels[1]

    def rows(self, concept: str) -> list[tuple[str, int]]:
        return ([("target", i) for i in self.images.target[concept]]
                + [("other", i) for i in self.images.other[concept]])

    def captions(self, image_ids: Sequence[int], pixels: Mapping[int, Any],
                 neurons: Mapping[int, Sequence[int]] | None, adapter: VLMAdapter | None = None) -> list[str]:
        """Captions of ``image_ids`` by ``adapter`` (default: the run's model), one `caption_images` call per batch
        (the same batches as one call); planned captions (`plan_captions`) are read back instead of made here."""
        planned = None if self.planned is None or adapter is not None else self.planned.texts(image_ids, neurons)
        if planned is not None:
            if self.progress is not None:
                self.progress.advance(len(image_ids))
            return planned
        texts: list[str] = []
        size = self.config.batch_size
        with seeded_torch(self.config.seed):  # the caller's torch RNG streams are as they were afterwards
            for start in range(0, len(image_ids), size):
                chunk = image_ids[start:start + size]
                texts += caption_images(adapter or self.adapter, [pixels[i] for i in chunk], neurons,
                                        batch_size=size, **self.generate_kwargs).texts
                if self.progress is not None:
                    self.progress.advance(len(chunk))
        return texts

    def under_sets(self, image_ids: Sequence[int], pixels: Mapping[int, Any], sets: Sequence[NeuronSet]
                   ) -> list[list[str]]:
        """Captions ``[len(sets)][len(image_ids)]`` of ``image_ids`` under each of ``sets`` with the evaluation's
        ablation, all in the same generates (`caption_under_sets`); planned captions are read back instead."""
        if self.planned is not None:
            planned = [self.planned.texts(image_ids, neurons) for neurons in sets]
            if all(texts is not None for texts in planned):
                if self.progress is not None:
                    self.progress.advance(len(image_ids) * len(sets))
                return [texts for texts in planned if texts is not None]
        with seeded_torch(self.config.seed):  # the caller's torch RNG streams are as they were afterwards
            out = caption_under_sets(self.adapter, [pixels[i] for i in image_ids], sets, self.ablation,
                                     rows_per_generate(self.config),
                                     on_rows=self.progress.advance if self.progress is not None else None,
                                     **self.generate_kwargs)
        return [captions.texts for captions in out]

    # -------------------------------------------------------------- rows
    def score_rows(self, concept: str, method: str, set_id: str | None, texts: Mapping[tuple[str, int], str]
                   ) -> dict[str, list[Any]]:
        """``scores`` rows of ``texts[(group, image)]`` against the unmodified captions and the ground truth."""
        keys, pairs = [], []
        for (group, image_id), text in texts.items():
            keys.append((group, image_id, "unmodified"))
            pairs.append((text, (self.unmodified[image_id],)))
            truth = tuple(self.dataset.captions(image_id))
            if truth:
                keys.append((group, image_id, "ground_truth"))
                pairs.append((text, truth))
        values = self.scores.score(pairs)
        out: dict[str, list[Any]] = {name: [] for name in ("group", "image_id", "metric", "reference", "value")}
        for (group, image_id, reference), value in zip(keys, values, strict=True):
            for metric in self.scores.metrics:
                out["group"].append(group)
                out["image_id"].append(image_id)
                out["metric"].append(metric)
                out["reference"].append(reference)
                out["value"].append(value[metric])
        n = len(out["group"])
        return {"eval_id": [self.eval_id] * n, "run_id": [self.run_id] * n, "set_id": [set_id] * n,
                "method": [method] * n, "concept": [concept] * n, **out}

    def caption_rows(self, concept: str, method: str, set_id: str | None, condition: str,
                     texts: Mapping[tuple[str, int], str]) -> dict[str, list[Any]]:
        n = len(texts)
        return {"eval_id": [self.eval_id] * n, "run_id": [self.run_id] * n, "set_id": [set_id] * n,
                "method": [method] * n, "concept": [concept] * n, "group": [g for g, _ in texts],
                "image_id": [i for _, i in texts], "condition": [condition] * n, "text": list(texts.values())}

    def write(self, tables: Mapping[str, Rows | pa.Table]) -> None:
        with self.wh.batch() as batch:
            if self.eval_row is not None:
                batch.add("evals", self.eval_row())
                if self.ablation.mode == "mean" and self.ablation.reference is not None:
                    batch.add("ablation_means", means_rows(self.eval_id, self.run_id, self.ablation.reference))
            for table, rows in tables.items():
                batch.add(table, rows)
        self.eval_row = None

    # -------------------------------------------------------------- jobs
    def run_unmodified(self, concept: str, write: bool) -> None:
        """Make (or reuse) the unmodified captions of the concept's images; store them with their scores."""
        pixels = self.pixels(concept)
        missing = [i for _, i in self.rows(concept) if i not in self.unmodified]
        if missing:
            for image_id, text in zip(missing, self.captions(missing, pixels, None), strict=True):
                self.unmodified[image_id] = text
        if not write:
            return
        texts = {(group, i): self.unmodified[i] for group, i in self.rows(concept)}
        self.write({"captions": self.caption_rows(concept, UNMODIFIED, None, "unmodified", texts),
                    "scores": self.score_rows(concept, UNMODIFIED, None, texts)})

    def neuron_set(self, concept: str, name: str) -> tuple[str, list[ScoredNeuron], pa.Table | None]:
        """(set_id, neurons, ``neuron_sets`` rows to store or None) of method label ``name`` for ``concept``.

        ``name``: a method, or ``"<method>@<n>"`` in a budget evaluation (stored under that label).
        """
        method, at = split_label(name)
        if method == EDITED_METHOD and self.edited is not None:
            set_id, edited = self.edited.neuron_set(self.run_id, self.sets)
            return set_id or "", edited, None
        if method == REFERENCE_METHOD and at is None:
            reference = self.ctx.reference(concept)
            return reference.set_id, list(self.sets[reference.set_id].neurons), None
        budget = self.budgets[concept] if at is None else at
        ranking: BudgetRanking = self.ctx.stage_ranking
        if method == REFERENCE_METHOD:
            params = {**ranking.two_stage_params(concept, budget, None),
                      "budget_of": self.ctx.reference(concept).set_id}
        else:
            options = dict(self.config.baseline_options.get(method, {}))
            if at is not None and method in PER_BUDGET_RANDOM:
                options.setdefault("per_budget", True)  # independent draws per budget, not near-copies
            baseline = get_baseline(method, **options)
            params = baseline.params(self.ctx, concept, budget)
        set_id = set_id_of(self.run_id, concept, name, params)
        if set_id in self.sets:
            return set_id, list(self.sets[set_id].neurons), None
        self.log(f"{name}: selecting {budget} neuron(s) for {concept!r}")
        if method == REFERENCE_METHOD:
            neurons, pool_key = ranking.two_stage_top(concept, budget, None), (concept, budget, None)
        else:
            neurons = baseline.select(self.ctx, concept, budget)
            pool_key = (concept, budget, getattr(baseline, "specific", None))
        if len(neurons) != budget:
            self.notes.append(short_note(method, concept, budget, len(neurons), ranking.pool_sizes.get(pool_key)))
            self.log(self.notes[-1])
        created_at = datetime.now(timezone.utc)
        resolved = {"n_selected": len(neurons)}
        self.sets[set_id] = StoredSet(set_id, concept, name, {**params, "resolved": resolved}, created_at,
                                      list(neurons))
        return set_id, list(neurons), set_rows(self.run_id, concept, name, set_id, params, neurons, created_at,
                                               resolved)

    def run_methods(self, concept: str, methods: Sequence[str]) -> None:
        """Suppressed captions of the concept's images for each of ``methods``' sets, all in the same generates
        (`caption_under_sets`), with scores; one warehouse batch per method."""
        rows = self.rows(concept)
        image_ids = [i for _, i in rows]
        pixels = self.pixels(concept)
        chosen = [(method, *(self._chosen.pop((concept, method), None) or self.neuron_set(concept, method)))
                  for method in methods]
        hooked = [c for c in chosen if not (c[0] == EDITED_METHOD and self.edited is not None)]
        texts_of: dict[str, list[str]] = {}
        if hooked:
            sets = [as_neuron_set([(layer, unit) for layer, unit, _ in neurons]) for _, _, neurons, _ in hooked]
            out = self.under_sets(image_ids, pixels, sets)
            texts_of = {method: texts for (method, *_), texts in zip(hooked, out, strict=True)}
        for method, set_id, _, new_set in chosen:
            if method not in texts_of:  # the edited model: the edit is in the weights, no hook
                texts_of[method] = self.captions(image_ids, pixels, None, self.edited.adapter)  # type: ignore[union-attr]
            texts = dict(zip(rows, texts_of[method], strict=True))
            tables: dict[str, Rows | pa.Table] = {}
            if new_set is not None and new_set.num_rows:  # an empty set has no rows to store
                tables["neuron_sets"] = new_set
            tables["captions"] = self.caption_rows(concept, method, set_id or None, "suppressed", texts)
            tables["scores"] = self.score_rows(concept, method, set_id or None, texts)
            self.write(tables)


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
            evaluation = _Evaluation(config, wh, run.run_id, key.eval_id,
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


def _run_jobs(evaluation: _Evaluation, plan: _Plan) -> None:
    """Run the jobs not done yet, concept by concept: the unmodified captions (stored unless done), then every
    pending method."""
    for concept in dict.fromkeys(c for c, _ in plan.jobs):
        todo = [m for m in plan.labels if (concept, m) not in plan.done]
        if todo or (concept, UNMODIFIED) not in plan.done:  # every method needs the unmodified captions
            evaluation.run_unmodified(concept, write=(concept, UNMODIFIED) not in plan.done)
        if todo:
            evaluation.run_methods(concept, todo)


def _check_fragility(config: EvalConfig, evaluation: _Evaluation, run: _Run, inputs: _Inputs, plan: _Plan,
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
