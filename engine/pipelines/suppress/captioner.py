"""Captioning for the suppress step, apart from where it runs: in the driver, or in a Ray actor
(`kneuron.engine.pipelines.suppress.ray`).

    texts = caption_chunk(adapter, pixels, [None, {3: [7, 9]}], batch_size=4, seed=0)   # [n_sets][n_images]

`caption_chunk` captions a chunk of images under a list of neuron sets as a local run does: the unmodified
captions (set None) in batches of ``batch_size``, the suppressed ones under every set at once
(`kneuron.engine.interventions.multiset.caption_under_sets`, many sets per generate, with the evaluation's ablation).
`call_ranges`
cuts a request into such chunks. `Captioner` is the body of a Ray captioner actor: the run's model and dataset,
loaded once, and the evaluation's ablation. `PlannedCaptions` is what the driver holds: the texts of planned
(images, set) requests, filled by an engine (`CaptionEngine`) and read back by the evaluation in the order of a
local run. Nothing here imports Ray.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.interventions.ablation import Ablation
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.runtime.scoped import seeded_torch
from kneuron.engine.signals.neurons import NeuronSet

#: a neuron set as a hashable key (None: no suppression)
SetKey = tuple[tuple[int, tuple[int, ...]], ...] | None


def set_key(neurons: Mapping[int, Sequence[int]] | None) -> SetKey:
    """``{layer: units}`` (or None) as a hashable, order-free key."""
    if neurons is None:
        return None
    return tuple(sorted((int(layer), tuple(sorted(int(u) for u in units))) for layer, units in neurons.items()))


def rows_per_generate(config: EvalConfig) -> int:
    """(set, image) rows per generate of the evaluation (``config.rows_per_generate``, default 4 x batch size)."""
    return config.rows_per_generate or 4 * config.batch_size


def call_ranges(n_images: int, sets: Sequence[NeuronSet | None], batch_size: int, rows: int
                ) -> list[tuple[int, int]]:
    """``[(start, stop)]``: the image ranges one request (``n_images`` images x ``sets``) is cut into, one call
    each. Unmodified only (``sets == [None]``): the local run's batches of ``batch_size`` images; otherwise
    about ``rows`` (set, image) rows a call (one generate), at least one image."""
    size = batch_size if all(s is None for s in sets) else max(1, rows // max(1, len(sets)))
    return [(start, min(start + size, n_images)) for start in range(0, n_images, size)]


def caption_chunk(adapter: VLMAdapter, images: Sequence[Any], sets: Sequence[NeuronSet | None], batch_size: int,
                  seed: int, ablation: Ablation | None = None, rows: int | None = None, first_image: int = 0,
                  **generate_kwargs: Any) -> list[list[str]]:
    """Captions of ``images`` under each of ``sets`` (None: unmodified), ``[len(sets)][len(images)]``, as a local
    run makes them: unmodified in batches of ``batch_size`` (`caption_images`); the other sets all in the same
    generates of ``rows`` rows (default 4 x ``batch_size``) with ``ablation`` (`caption_under_sets`;
    ``first_image``: the index of ``images[0]`` in the evaluation's list of the concept's images, which draws
    the resample donors). Under ``seeded_torch(seed)``, as a local run."""
    plain = [k for k, neurons in enumerate(sets) if neurons is None]
    hooked = [k for k, neurons in enumerate(sets) if neurons is not None]
    out: list[list[str]] = [[] for _ in sets]
    with seeded_torch(seed):
        for k in plain:
            for start in range(0, len(images), batch_size):
                out[k] += caption_images(adapter, list(images[start:start + batch_size]), None,
                                         batch_size=batch_size, **generate_kwargs).texts
        if hooked:
            made = caption_under_sets(adapter, list(images), [sets[k] for k in hooked], ablation,
                                      rows or 4 * batch_size, first_image=first_image, **generate_kwargs)
            for k, captions in zip(hooked, made, strict=True):
                out[k] = captions.texts
    return out


class Captioner:
    """A captioner actor's state: the evaluation's model and dataset, loaded once (on the actor's GPU when it has
    one and ``config.device`` allows), ``threads`` torch threads, and the evaluation's ``ablation`` (for mean /
    resample its reference activations, recorded by the driver)."""

    def __init__(self, config: EvalConfig, run: Mapping[str, Any], threads: int,
                 ablation: Ablation | None = None) -> None:
        from kneuron.engine.pipelines.suppress.inputs import open_dataset, open_model

        torch.set_num_threads(max(1, threads))
        self.config = config
        self.ablation = ablation or Ablation()
        self.adapter = open_model(config, run)
        self.dataset = open_dataset(config, run)
        self.generate_kwargs = {} if config.max_new_tokens is None else {"max_new_tokens": config.max_new_tokens}

    def caption(self, image_ids: Sequence[int], sets: Sequence[NeuronSet | None], first_image: int = 0
                ) -> list[list[str]]:
        """`caption_chunk` of the dataset's images ``image_ids`` (the evaluation's list from ``first_image``)."""
        images = [self.dataset.load_image(int(i)) for i in image_ids]
        return caption_chunk(self.adapter, images, sets, self.config.batch_size, self.config.seed, self.ablation,
                             rows_per_generate(self.config), first_image, **self.generate_kwargs)

    def ready(self) -> bool:
        """True once the model is loaded (the driver waits on it to time the start)."""
        return True


class CaptionEngine(Protocol):
    """Where planned captions are made: ``submit`` requests, then ``texts`` (blocking) in any order."""

    def submit(self, image_ids: Sequence[int], sets: Sequence[NeuronSet | None]) -> None: ...

    def texts(self, image_ids: Sequence[int], neurons: NeuronSet | None) -> list[str]: ...


class PlannedCaptions:
    """The driver's plan of caption requests: each concept's (images, sets) submitted once to ``engine``, read
    back per (images, set) by the evaluation in a local run's order. A set planned again on the same images (two
    methods with the same units) is not submitted twice: its texts are kept until read as often as planned."""

    def __init__(self, engine: CaptionEngine) -> None:
        self.engine = engine
        self.reads: dict[tuple[tuple[int, ...], SetKey], int] = {}  # planned reads not made yet
        self.kept: dict[tuple[tuple[int, ...], SetKey], list[str]] = {}  # texts read once, to be read again

    def plan(self, image_ids: Sequence[int], sets: Sequence[NeuronSet | None]) -> None:
        ids = tuple(int(i) for i in image_ids)
        if not ids:
            return
        unique: dict[SetKey, NeuronSet | None] = {}
        for neurons in sets:
            key = (ids, set_key(neurons))
            if key not in self.reads and set_key(neurons) not in unique:
                unique[set_key(neurons)] = neurons
            self.reads[key] = self.reads.get(key, 0) + 1
        if unique:
            self.engine.submit(ids, list(unique.values()))

    def texts(self, image_ids: Sequence[int], neurons: NeuronSet | None) -> list[str] | None:
        """The planned texts of ``image_ids`` under ``neurons`` (waits for them), or None when not planned."""
        key = (tuple(int(i) for i in image_ids), set_key(neurons))
        left = self.reads.get(key, 0)
        if not left:
            return None
        texts = self.kept.pop(key) if key in self.kept else self.engine.texts(key[0], neurons)
        if left > 1:
            self.kept[key] = texts
            self.reads[key] = left - 1
        else:
            del self.reads[key]
        return list(texts)


def plan_captions(evaluation: Any, engine: CaptionEngine, jobs: Sequence[tuple[str, str]],
                  done: set[tuple[str, str]], labels: Sequence[str]) -> None:
    """Submit to ``engine`` every caption the jobs still to run will ask ``evaluation`` (the suppress step's
    `Evaluation`) for, as they will ask (the same image lists, hence the same batches): per concept its missing
    unmodified captions, then its images under the sets of its pending methods (chosen now, in job order, and
    kept for its ``run_methods``)."""
    from kneuron.engine.eval.budget import split_label
    from kneuron.engine.eval.config import EDITED_METHOD
    from kneuron.engine.eval.summary import UNMODIFIED
    from kneuron.engine.signals.neurons import as_neuron_set

    evaluation.planned = PlannedCaptions(engine)
    have = set(evaluation.unmodified)
    for concept in dict.fromkeys(c for c, _ in jobs):
        ids = [i for _, i in evaluation.rows(concept)]
        if any((concept, m) not in done for m in (UNMODIFIED, *labels)):
            evaluation.planned.plan([i for i in ids if i not in have], [None])
            have.update(ids)
        sets = []
        for method in labels:
            if (concept, method) in done:
                continue
            if split_label(method)[0] == EDITED_METHOD and evaluation.edited is not None:
                raise KneuronError("the edited model is evaluated with --engine local only")
            chosen = evaluation._chosen[(concept, method)] = evaluation.neuron_set(concept, method)
            sets.append(as_neuron_set([(layer, unit) for layer, unit, _ in chosen[1]]))
        evaluation.planned.plan(ids, sets)
