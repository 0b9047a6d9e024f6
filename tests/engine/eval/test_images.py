"""`kneuron.engine.eval.images.choose_images`: target and other images per concept, seeded, disjoint from the concept,
matched in number (or capped / fixed)."""
from __future__ import annotations

import pytest

from kneuron.engine.eval.config import EvalConfig
from kneuron.engine.eval.images import choose_images
from tests.helpers.eval_fixtures import build_eval_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_eval_world(tmp_path_factory.mktemp("images"), with_stats=False)


def test_choose_images_is_seeded_disjoint_and_matched(world):
    contains = lambda image_id, concept: concept in world.dataset.concepts_in(image_id)  # noqa: E731
    config = EvalConfig(seed=0)
    images = choose_images(config, ["circle", "star"], world.evaluation, contains)
    assert images == choose_images(config, ["circle", "star"], world.evaluation, contains)
    pool = {i for ids in world.evaluation.values() for i in ids}
    for concept in ("circle", "star"):
        assert images.target[concept] == world.evaluation[concept]
        assert len(images.other[concept]) == len(images.target[concept])
        assert set(images.other[concept]) <= pool
        assert not any(contains(i, concept) for i in images.other[concept])
    capped = choose_images(EvalConfig(seed=0, max_images=2, n_other=5), ["star"], world.evaluation, contains)
    assert len(capped.target["star"]) == 2 and set(capped.target["star"]) <= set(world.evaluation["star"])
    assert len(capped.other["star"]) == 5
    seeds = {tuple(choose_images(EvalConfig(seed=s), ["circle"], world.evaluation, contains).other["circle"])
             for s in range(6)}
    assert len(seeds) > 1
