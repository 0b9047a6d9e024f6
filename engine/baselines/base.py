"""What every baseline neuron selector shares: the `Baseline` interface, its `BaselineContext`, and a registry.

A baseline picks ``budget`` neurons ``(layer, unit)`` for a concept, so that it can be compared with the
two-stage set ``N_k`` at the same size. ``select`` returns ``[(layer, unit, score), ...]`` (score None where a
method has none, e.g. random), sorted by descending score (then layer, unit), and is deterministic: the same
context (model, images, seed) gives the same list.

``params`` is the method's identity: together with (run, concept, method) it gives the ``set_id`` under which
the set is stored in ``neuron_sets`` (a hash of both), so a set already stored is reused, not
recomputed.

Identification inputs shared by the model-based baselines (Pan et al., Dai et al.): for each identification
image of ``k``, the model's own greedy caption and the position that predicts the concept's first sub-token
in it (teacher-forced), falling back to the adapter's answer prefix when the caption lacks the concept
(`concept_target`, the same rule as stage 2 of ingest). They are computed once per concept and kept in the context.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.record import Target, choose_target

#: one selected neuron: (layer, unit, score or None)
ScoredNeuron = tuple[int, int, float | None]


@dataclass(frozen=True)
class ReferenceSet:
    """The two-stage set ``N_k`` a baseline is matched to: its id, its selection parameters and its neurons."""

    set_id: str
    params: Mapping[str, Any]
    neurons: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return len(self.neurons)

    def layer_counts(self) -> dict[int, int]:
        """``{layer: number of neurons of the set in that layer}`` (layers without neurons left out)."""
        counts: dict[int, int] = {}
        for layer, _ in self.neurons:
            counts[int(layer)] = counts.get(int(layer), 0) + 1
        return dict(sorted(counts.items()))


@dataclass
class BaselineContext:
    """Everything a baseline may need. Only the fields a method uses must be set.

    adapter / dataset: the model and the COCO-format dataset of the run (model-based baselines).
    run_id: the warehouse run. ident_images: concept -> identification image ids (ascending).
    reference_sets: concept -> the selected ``two_stage`` set (layer matching, stage baselines).
    seed: base seed of the random baselines. batch_size: images per captioning / forward batch.
    stage_ranking: one stage's ranking of the neurons (`kneuron.engine.baselines.stage.StageRanking`), for the
        stage-only baselines; the caller backs it with the stored signals.
    massive_units: ``k -> [(layer, unit), ...]``, the run's massive units by the stored-signal rule
        (``queries/massive_units.sql``), for ``random_nonmassive``; the caller backs it with the warehouse.
    """

    adapter: VLMAdapter | None = None
    dataset: Any = None
    run_id: str = ""
    ident_images: Mapping[str, Sequence[int]] = field(default_factory=dict)
    reference_sets: Mapping[str, ReferenceSet] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 8
    stage_ranking: Any = None
    massive_units: Any = None
    _targets: dict[str, tuple[list[int], list[Target]]] = field(default_factory=dict, repr=False)

    def reference(self, concept: str) -> ReferenceSet:
        if concept not in self.reference_sets:
            raise KneuronError(f"no two_stage neuron set for concept {concept!r} in run {self.run_id!r} "
                               "(run `kneuron select` first)")
        return self.reference_sets[concept]

    def require_model(self, method: str) -> tuple[VLMAdapter, Any]:
        if self.adapter is None or self.dataset is None:
            raise KneuronError(f"baseline {method!r} needs a model and a dataset")
        return self.adapter, self.dataset

    def ident_ids(self, concept: str) -> list[int]:
        ids = sorted(int(i) for i in self.ident_images.get(concept, ()))
        if not ids:
            raise KneuronError(f"no identification images for concept {concept!r} in run {self.run_id!r}")
        return ids

    def ident_targets(self, concept: str) -> tuple[list[int], list[Target]]:
        """(image ids, `Target` per image) for the identification images of ``concept`` (computed once)."""
        if concept not in self._targets:
            from kneuron.engine.interventions.caption import caption_images

            adapter, dataset = self.require_model("ident_targets")
            ids = self.ident_ids(concept)
            captions = caption_images(adapter, [dataset.load_image(i) for i in ids], None,
                                      batch_size=self.batch_size)
            targets = [concept_target(adapter, row, concept) for row in captions.token_ids]
            self._targets[concept] = (ids, targets)
        return self._targets[concept]

    def ident_pixels(self, concept: str) -> list[Image.Image]:
        """The identification images of ``concept`` (PIL, in `ident_ids` order)."""
        _, dataset = self.require_model("ident_pixels")
        return [dataset.load_image(i) for i in self.ident_ids(concept)]


def concept_target(adapter: VLMAdapter, caption_ids: Sequence[int], concept: str) -> Target:
    """Where ``y^c`` is read for one identification image: the ingest rule
    (`kneuron.engine.signals.record.choose_target`).

    The caption up to and including the first occurrence of the concept's sub-token sequence
    (``source="caption"``), else the answer prefix with ``y^c`` right after it (``source="prefix"``). The
    logits at sequence position ``prompt_length + index - 1`` predict the concept's first sub-token, so the
    baselines read the same position as stage 2 of the two-stage method.
    """
    pieces = [int(i) for i in adapter.concept_tokens(concept)]
    if not pieces:
        raise KneuronError(f"concept {concept!r} has no tokens in the vocabulary of model {adapter.name}")
    prefix = adapter.encode(adapter.answer_prefix) if adapter.answer_prefix else []
    return choose_target(caption_ids, pieces, prefix)


def concept_rng(seed: int, concept: str, salt: str = "") -> np.random.Generator:
    """A generator that depends only on (seed, concept, salt)."""
    digest = hashlib.sha256(f"{salt}:{concept}".encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def top_neurons(scores: np.ndarray, budget: int, eligible: np.ndarray | None = None) -> list[ScoredNeuron]:
    """The ``budget`` neurons with the largest ``scores [L, d_ff]`` (ties: lower layer, then lower unit).

    eligible: optional ``bool [L, d_ff]``; only those neurons are ranked.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_layers, d_ff = scores.shape
    flat = scores.reshape(-1)
    index = np.arange(flat.size)
    if eligible is not None:
        index = index[np.asarray(eligible, dtype=bool).reshape(-1)]
    order = index[np.lexsort((index, -flat[index]))]  # score desc, then flat index (layer, unit) asc
    chosen = order[:budget]
    return [(int(i // d_ff), int(i % d_ff), float(flat[i])) for i in chosen]


def check_budget(budget: int, n_layers: int, d_ff: int) -> int:
    if int(budget) != budget or budget < 0:
        raise KneuronError(f"neuron budget must be a whole number >= 0, got {budget!r}")
    if budget > n_layers * d_ff:
        raise KneuronError(f"neuron budget {budget} exceeds the model's {n_layers * d_ff} neurons")
    return int(budget)


class Baseline(ABC):
    """A neuron selector compared against the two-stage set at the same budget."""

    #: registry name, also the ``method`` column of ``neuron_sets``
    name: ClassVar[str]

    def params(self, ctx: BaselineContext, concept: str, budget: int) -> dict[str, Any]:
        """JSON-ready identity of the set this baseline gives for (concept, budget) in ``ctx``."""
        params: dict[str, Any] = {"budget": int(budget), **self.options()}
        if concept in ctx.reference_sets:
            params["budget_of"] = ctx.reference_sets[concept].set_id
        return params

    def options(self) -> dict[str, Any]:
        """The method's own settings (part of ``params``)."""
        return {}

    @abstractmethod
    def select(self, ctx: BaselineContext, concept: str, budget: int) -> list[ScoredNeuron]:
        """``budget`` neurons ``(layer, unit, score)`` for ``concept``; deterministic."""


BASELINES: dict[str, type[Baseline]] = {}


def register(cls: type[Baseline]) -> type[Baseline]:
    """Class decorator: make ``cls`` available as ``get_baseline(cls.name)``."""
    if cls.name in BASELINES and BASELINES[cls.name] is not cls:
        raise ValueError(f"baseline name {cls.name!r} registered twice")
    BASELINES[cls.name] = cls
    return cls
