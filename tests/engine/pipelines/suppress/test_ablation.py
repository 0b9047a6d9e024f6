"""Ablation modes in the suppress pipeline: mean ablation stores its reference means (the values the captions
were made with), its captions equal `caption_under_sets` with the recorded reference, its eval id differs from
zero ablation's (which keeps the id it always had), resume works; random sets of a budget evaluation are
independent draws per budget; the CLI and TOML take the mode."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kneuron import warehouse
from kneuron.engine.baselines.base import BaselineContext, ReferenceSet
from kneuron.engine.baselines.random import RandomBaseline, RandomLayerMatchedBaseline
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.config import EvalConfig, config_from_dict
from kneuron.engine.interventions.ablation import Ablation, record_reference
from kneuron.engine.interventions.multiset import caption_under_sets
from kneuron.engine.pipelines.suppress.ablation import reference_image_ids
from kneuron.engine.pipelines.suppress.inputs import run_images
from kneuron.engine.pipelines.suppress.pipeline import run_evaluation
from kneuron.engine.signals.neurons import as_neuron_set
from tests.helpers.eval_fixtures import FAST, build_eval_world
from tests.helpers.tiny_models import tiny_minigpt4


@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_eval_world(tmp_path_factory.mktemp("ablation"))


def test_mean_ablation_stores_means_and_captions_with_them(world, adapter) -> None:  # noqa: ANN001
    zero = EvalConfig(methods=("two_stage", "random"), metrics=FAST, max_images=2, batch_size=4,
                      concepts=("circle",), reference_images=3)
    mean = dataclasses.replace(zero, ablation="mean")
    assert zero.identity() == dataclasses.replace(zero, reference_images=7).identity()  # zero: old ids
    got = run_evaluation(mean, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    plain = run_evaluation(zero, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert got.eval_id != plain.eval_id
    from kneuron import queries

    con = queries.connect(world.warehouse)
    try:
        _, ident = run_images(con, got.run_id)
        means = con.execute("SELECT layer, unit, kind, value FROM ablation_means WHERE eval_id = ? "
                            "ORDER BY layer, unit, kind", [got.eval_id]).fetchall()
        rows = con.execute("SELECT image_id, text FROM captions WHERE eval_id = ? AND method = 'two_stage' "
                           "ORDER BY \"group\" DESC, image_id", [got.eval_id]).fetchall()
        n_zero_means = con.execute("SELECT count(*) FROM ablation_means WHERE eval_id = ?",
                                   [plain.eval_id]).fetchone()
    finally:
        con.close()
    assert n_zero_means == (0,)
    ids = reference_image_ids(ident, ["circle"], 3, seed=0)
    assert len(ids) == 3 and ids == sorted(ids)
    reference = record_reference(adapter, [world.dataset.load_image(i) for i in ids], 4)
    want = reference.means().numpy()  # [L, 3, d_ff]
    assert len(means) == want.size
    kinds = {"image": 0, "prompt": 1, "generated": 2}
    stored = np.zeros_like(want)
    for layer, unit, kind, value in means:
        stored[layer, kinds[kind], unit] = value
    np.testing.assert_allclose(stored, want, rtol=1e-6)
    # the stored captions are caption_under_sets with that reference, image by image as the pipeline orders them
    images = [world.dataset.load_image(i) for i, _ in rows]
    direct = caption_under_sets(adapter, images, [as_neuron_set(world.two_stage["circle"][1])],
                                Ablation("mean", reference))[0].texts
    by_id = dict(zip([i for i, _ in rows], direct, strict=True))
    assert [text for _, text in rows] == [by_id[i] for i, _ in rows]
    # resume: everything stored, nothing run
    again = run_evaluation(mean, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    assert (again.eval_id, again.jobs_run) == (got.eval_id, 0)


def test_resample_evaluation_runs_and_differs_from_zero(world, adapter) -> None:  # noqa: ANN001
    config = EvalConfig(methods=("two_stage",), metrics=FAST, max_images=2, batch_size=4, concepts=("circle",),
                        ablation="resample", reference_images=2)
    got = run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    with warehouse.connect(world.warehouse) as con:
        n = con.execute("SELECT count(*) FROM captions WHERE eval_id = ? AND method = 'two_stage'",
                        [got.eval_id]).fetchone()
        config_json = con.execute("SELECT config_json FROM evals WHERE eval_id = ?", [got.eval_id]).fetchone()[0]
    assert n[0] > 0 and '"mode": "resample"' in config_json and '"reference_images": [' in config_json


def test_config_and_errors() -> None:
    config = config_from_dict({"ablation": "mean", "reference_images": 8, "rows_per_generate": 32})
    assert (config.ablation, config.reference_images, config.rows_per_generate) == ("mean", 8, 32)
    assert config.identity()["ablation"] == "mean" and "rows_per_generate" not in config.identity()
    with pytest.raises(KneuronError, match="cfg: unknown ablation 'half'; known: zero, mean, resample"):
        config_from_dict({"ablation": "half"}, source="cfg")
    with pytest.raises(KneuronError, match="cfg: reference_images must be a whole number >= 1, got 0"):
        config_from_dict({"ablation": "mean", "reference_images": 0}, source="cfg")


def test_random_sets_per_budget_are_independent_draws() -> None:
    class Shape:
        n_layers, d_ff = 4, 200

    ref = ReferenceSet(set_id="r", params={}, neurons=((0, 1), (1, 2), (1, 3), (3, 4)))
    ctx = BaselineContext(adapter=Shape(), reference_sets={"dog": ref}, seed=3)  # type: ignore[arg-type]
    shared = RandomBaseline()
    two, eight = ({(a, b) for a, b, _ in shared.select(ctx, "dog", n)} for n in (2, 8))
    assert RandomBaseline().options() == {"exclude_reference": True}  # the single-budget sets keep their ids
    per = RandomBaseline(per_budget=True)
    assert per.options() == {"exclude_reference": True, "per_budget": True}
    draws = {n: {(a, b) for a, b, _ in per.select(ctx, "dog", n)} for n in (2, 4, 8, 16)}
    assert draws[2] == {(a, b) for a, b, _ in per.select(ctx, "dog", 2)}  # seeded
    assert per.select(ctx, "dog", 8) != shared.select(ctx, "dog", 8)
    # independent draws of 8 from 796 units overlap by ~0.1 unit on average; the old near-copies share most
    overlaps = [len(draws[a] & draws[b]) for a, b in ((2, 4), (4, 8), (8, 16), (2, 16))]
    assert sum(overlaps) <= 2, overlaps

    def near_copy(small: set, large: set) -> bool:  # every unit of small has a neighbour (same layer, +-3) in large
        return all(any(la == lb and abs(ua - ub) <= 3 for lb, ub in large) for la, ua in small)

    assert near_copy(two, eight)  # the shared generator: nearby budgets are near-copies (the old behaviour)
    assert not near_copy(draws[2], draws[8])
    matched = RandomLayerMatchedBaseline(per_budget=True)
    a, b = (matched.select(ctx, "dog", n) for n in (4, 8))
    assert len({(x, y) for x, y, _ in a} & {(x, y) for x, y, _ in b}) <= 2


def test_cli_ablation_option(tmp_path, capsys) -> None:  # noqa: ANN001
    from tests.helpers.cli_runner import run_cli

    code, _, err = run_cli(["suppress", "--warehouse", str(tmp_path / "none"), "--ablation", "half"], capsys)
    assert code == 2 and "half" in err


def test_budget_evaluation_draws_random_sets_per_budget(world, adapter) -> None:  # noqa: ANN001
    import json

    config = EvalConfig(methods=("random",), budgets=(2, 8), metrics=FAST, max_images=1, batch_size=4,
                        concepts=("star",))
    run_evaluation(config, world.warehouse, adapter=adapter, dataset=world.dataset, progress=False)
    with warehouse.connect(world.warehouse) as con:
        rows = con.execute("SELECT method, params_json, layer, unit FROM neuron_sets WHERE concept = 'star' "
                           "AND method LIKE 'random@%' ORDER BY layer, unit").fetchall()
    assert {json.loads(p).get("per_budget") for _, p, _, _ in rows} == {True}
    ref = ReferenceSet(set_id="x", params={}, neurons=tuple(sorted(world.two_stage["star"][1])))
    ctx = BaselineContext(adapter=adapter, reference_sets={"star": ref}, seed=0)
    for n in (2, 8):
        got = sorted((a, b) for m, _, a, b in rows if m == f"random@{n}")
        assert got == [(a, b) for a, b, _ in RandomBaseline(per_budget=True).select(ctx, "star", n)]
