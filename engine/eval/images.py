"""Which images an evaluation captions, per concept: the *target* images (evaluation images of the concept,
at most ``max_images``, a seeded choice) and the *other* images (evaluation images of the run's other concepts
that do not contain it: as many as the target images, ``n_other = "match"``, or a fixed number; a seeded
choice). Pure: the caller passes the run's evaluation images and a ``contains(image_id, concept)`` test.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kneuron.engine.baselines.base import concept_rng
from kneuron.engine.eval.config import EvalConfig


@dataclass
class EvalImages:
    """Per concept: target image ids and other image ids (ascending)."""

    target: dict[str, list[int]]
    other: dict[str, list[int]]


def choose_images(config: EvalConfig, concepts: Sequence[str], eval_images: Mapping[str, Sequence[int]],
                  contains: Callable[[int, str], bool]) -> EvalImages:
    """Target and other images per concept (module docstring); deterministic in ``config.seed``.

    eval_images: concept -> its evaluation image ids (every concept of the run: they make the pool of other
    images). contains: whether an image is annotated with a concept.
    """
    pool_all = sorted({int(i) for ids in eval_images.values() for i in ids})
    target: dict[str, list[int]] = {}
    other: dict[str, list[int]] = {}
    for concept in concepts:
        ids = sorted({int(i) for i in eval_images.get(concept, ())})
        if config.max_images is not None and len(ids) > config.max_images:
            pick = concept_rng(config.seed, concept, "target").permutation(len(ids))[: config.max_images]
            ids = sorted(ids[i] for i in pick)
        target[concept] = ids
        pool = [i for i in pool_all if not contains(i, concept)]
        n = len(ids) if config.n_other == "match" else int(config.n_other)
        pick = concept_rng(config.seed, concept, "other").permutation(len(pool))[:n]
        other[concept] = sorted(pool[i] for i in pick)
    return EvalImages(target=target, other=other)


__all__ = ["EvalImages", "choose_images"]
