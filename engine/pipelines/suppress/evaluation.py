"""One suppress evaluation while it runs: its model, caches and warehouse writer, and the jobs it does per
concept (`Evaluation`): the unmodified captions, the captions under every method's set (many sets per decode), their
scores and the stored rows. `kneuron.engine.pipelines.suppress.pipeline.run_evaluation` plans the jobs and runs them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from kneuron.engine.baselines.base import BaselineContext, ScoredNeuron
from kneuron.engine.baselines.registry import get_baseline
from kneuron.engine.eval.budget import split_label
from kneuron.engine.eval.config import EDITED_METHOD, REFERENCE_METHOD, EvalConfig
from kneuron.engine.eval.images import EvalImages
from kneuron.engine.eval.scoring import ScoreCache
from kneuron.engine.eval.summary import UNMODIFIED
from kneuron.engine.interventions.ablation import Ablation
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.sets import StoredSet
from kneuron.engine.pipelines.suppress.ablation import means_rows
from kneuron.engine.pipelines.suppress.budget import BudgetRanking, short_note
from kneuron.engine.pipelines.suppress.captioner import (
    CaptionEngine,
    PlannedCaptions,
    rows_per_generate,
)
from kneuron.engine.pipelines.suppress.edited import EditedModel
from kneuron.engine.runtime.progress import Progress
from kneuron.engine.runtime.scoped import seeded_torch
from kneuron.engine.signals.neurons import NeuronSet, as_neuron_set
from kneuron.queries.selection import set_id_of, set_rows
from kneuron.warehouse import Warehouse

Log = Callable[[str], None]
#: random baselines drawn independently per budget in a budget evaluation (random_nonmassive is nested)
PER_BUDGET_RANDOM = ("random", "random_layer_matched")
Rows = Mapping[str, Sequence[Any]]
#: where captions are made when not in this process: (config, run row, the evaluation's ablation) -> a context
#: giving a `CaptionEngine`
RemoteCaptions = Callable[[EvalConfig, Mapping[str, Any], Ablation],
                          contextlib.AbstractContextManager[CaptionEngine]]


class Evaluation:
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
