"""Baselines: Pan et al. scores and Dai et al. integrated gradients against plain-PyTorch loop references, the
sharing-ratio refinement by hand, the random controls (seeded, layer-matched, excluding N_k; random_nonmassive
also the massive units, nested over budgets), the single-stage sets against a numpy computation and against
`kneuron.queries.selection`'s own ids, two_stage_specific against the SQL pool, and the exact budget of every method.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kneuron import warehouse
from kneuron.engine.baselines import BASELINES, BaselineContext, ReferenceSet, concept_target, get_baseline
from kneuron.engine.baselines.dai import ig_attributions, refine
from kneuron.engine.baselines.pan import pan_scores
from kneuron.engine.baselines.random import fit_counts, scale_counts
from kneuron.engine.errors import KneuronError
from kneuron.engine.pipelines.sets import StoredStageRanking
from kneuron.engine.pipelines.suppress.budget import BudgetRanking
from kneuron.engine.signals.record import Target
from tests.helpers.eval_fixtures import CONCEPTS, RUN_ID, TWO_STAGE_PARAMS, build_eval_world
from tests.helpers.tiny_models import tiny_minigpt4


@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_eval_world(tmp_path_factory.mktemp("baselines"))


def make_ctx(adapter, world, con=None, seed=0) -> BaselineContext:  # noqa: ANN001
    """The context of the fixture run; with ``con``, the stage-only baselines rank its stored signals."""
    refs = {c: ReferenceSet(set_id, TWO_STAGE_PARAMS, tuple(neurons))
            for c, (set_id, neurons) in world.two_stage.items()}
    ranking = None if con is None else BudgetRanking(con, RUN_ID, {c: r.params for c, r in refs.items()})
    return BaselineContext(adapter=adapter, dataset=world.dataset, run_id=RUN_ID, ident_images=world.ident,
                           reference_sets=refs, seed=seed, batch_size=3, stage_ranking=ranking,
                           massive_units=None if ranking is None else ranking.massive)


def two_targets(adapter) -> list[Target]:  # noqa: ANN001
    """A caption target (concept mid-caption) and a prefix target (concept right after the answer prefix)."""
    caption = adapter.encode("a red circle on the plain background")
    return [concept_target(adapter, caption, "circle"), concept_target(adapter, adapter.encode("blue square"), "star")]


# ---------------------------------------------------------------------------------------------- targets
def test_concept_target_reads_the_caption_or_falls_back_to_the_prefix(adapter):
    caption, prefix = two_targets(adapter)
    circle = adapter.concept_tokens("circle")[0]
    assert caption.source == "caption" and caption.token_id == circle
    assert caption.tokens == tuple(adapter.encode("a red circle")) and caption.index == 2
    star = adapter.concept_tokens("star")[0]
    assert prefix.source == "prefix" and prefix.token_id == star
    assert prefix.tokens == tuple(adapter.encode(adapter.answer_prefix)) and prefix.index == len(prefix.tokens)


# ---------------------------------------------------------------------------------------------- Pan et al.
def plain_hook_activations(adapter, image, target: Target) -> list[torch.Tensor]:  # noqa: ANN001
    """``O^l`` at the target position, one image, via forward pre-hooks on every ``down_proj``."""
    prepared = adapter.prepare([image], targets=[list(target.tokens)])
    position = prepared.prompt_length + target.index - 1
    kept: dict[int, torch.Tensor] = {}
    handles = [adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(
        lambda module, args, layer=layer: kept.__setitem__(layer, args[0][0, position].clone()))
        for layer in range(adapter.n_layers)]
    try:
        with torch.no_grad():
            adapter.model(*prepared.args, **prepared.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return [kept[layer] for layer in range(adapter.n_layers)]


def test_pan_scores_equal_plain_hook_reference(adapter, world):
    images = [world.dataset.load_image(i) for i in world.ident["circle"][:2]]
    targets = two_targets(adapter)
    scores = pan_scores(adapter, images, targets, batch_size=2)
    assert scores.shape == (2, adapter.n_layers, adapter.d_ff)
    for row, (image, target) in enumerate(zip(images, targets, strict=True)):
        acts = plain_hook_activations(adapter, image, target)
        w_u = adapter.language_model.lm_head.weight[target.token_id]
        for layer in range(adapter.n_layers):
            w_down = adapter.language_model.model.layers[layer].mlp.down_proj.weight  # [d_model, d_ff]
            expected = torch.stack([acts[layer][i] * torch.dot(w_down[:, i], w_u) for i in range(adapter.d_ff)])
            torch.testing.assert_close(scores[row, layer], expected, rtol=1e-4, atol=1e-6)
    # batch composition does not change a row
    torch.testing.assert_close(pan_scores(adapter, images[1:], targets[1:], batch_size=1)[0], scores[1],
                               rtol=1e-4, atol=1e-6)


def test_pan_selects_the_top_summed_scores(adapter, world):
    ctx = make_ctx(adapter, world)
    ids, targets = ctx.ident_targets("square")
    images = [world.dataset.load_image(i) for i in ids]
    total = pan_scores(adapter, images, targets).double().sum(0).numpy()
    chosen = get_baseline("pan").select(ctx, "square", 5)
    flat = np.argsort(-total.reshape(-1), kind="stable")[:5]
    assert [(layer, u) for layer, u, _ in chosen] == [(int(i // adapter.d_ff), int(i % adapter.d_ff)) for i in flat]
    assert [s for _, _, s in chosen] == pytest.approx(sorted(total.reshape(-1), reverse=True)[:5])


# ---------------------------------------------------------------------------------------------- Dai et al.
def loop_integrated_gradients(adapter, image, target: Target, steps: int) -> torch.Tensor:  # noqa: ANN001
    """``[L, d_ff]``: one forward and backward per (layer, step), single row, plain hooks."""
    prepared = adapter.prepare([image], targets=[list(target.tokens)])
    position = prepared.prompt_length + target.index - 1
    base = plain_hook_activations(adapter, image, target)
    out = torch.zeros(adapter.n_layers, adapter.d_ff)
    for layer in range(adapter.n_layers):
        total = torch.zeros(adapter.d_ff)
        for k in range(steps):
            point = (base[layer] * (k / steps)).clone().requires_grad_(True)

            def hook(module, args, point=point):  # noqa: ANN001
                x = args[0].clone()
                x[0, position] = point
                return (x,)

            handle = adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(hook)
            try:
                with torch.enable_grad():
                    logits = adapter.model(*prepared.args, **prepared.kwargs).logits[0, position]
                    probability = torch.softmax(logits, dim=-1)[target.token_id]
                    probability.backward()
            finally:
                handle.remove()
            total += point.grad
        out[layer] = base[layer] * total / steps
    return out


def test_dai_attribution_equals_a_loop_over_steps(adapter, world):
    images = [world.dataset.load_image(i) for i in world.ident["star"][:2]]
    targets = two_targets(adapter)
    batched = ig_attributions(adapter, images, targets, steps=20, images_per_batch=2)
    for row in range(2):
        expected = loop_integrated_gradients(adapter, images[row], targets[row], steps=20)
        torch.testing.assert_close(batched[row], expected, rtol=1e-4, atol=1e-8)
    assert batched.abs().sum() > 0
    torch.testing.assert_close(ig_attributions(adapter, images, targets, steps=20, images_per_batch=1), batched,
                               rtol=1e-4, atol=1e-8)


def test_refine_adaptive_threshold_and_sharing_ratio_by_hand():
    attributions = np.array([[[1.0, 0.5, 0.1, 0.0, -1.0]],
                             [[0.9, 0.05, 0.3, 0.0, 0.0]],
                             [[1.0, 0.6, 0.0, 0.25, 0.0]]])  # [3 images, 1 layer, 5 units]
    # kept per image (> 0.2 x max): {0, 1}, {0, 2}, {0, 1, 3} -> counts 3, 2, 1, 1, 0
    means = attributions.mean(axis=0)[0]
    chosen, share, survivors = refine(attributions, 2)
    assert (share, survivors) == (0.65, 2)  # p = 0.7 keeps only unit 0; 0.65 * 3 = 1.95 <= 2 adds unit 1
    assert chosen == [(0, 0, pytest.approx(means[0])), (0, 1, pytest.approx(means[1]))]
    chosen, share, survivors = refine(attributions, 4)
    assert (share, survivors) == (0.3, 4)  # 0.35 * 3 = 1.05 needs 2 images; 0.3 * 3 = 0.9 needs 1
    assert [u for _, u, _ in chosen] == [0, 1, 2, 3]
    chosen, share, survivors = refine(attributions, 5)
    assert (share, survivors) == (0.05, 4)  # the last step, then unit 4 fills the budget
    assert [u for _, u, _ in chosen] == [0, 1, 2, 3, 4]
    chosen, share, _ = refine(attributions, 1)
    assert share == 0.7 and [u for _, u, _ in chosen] == [0]


# ---------------------------------------------------------------------------------------------- random
def test_random_baselines_are_seeded_and_exclude_the_two_stage_set(adapter, world):
    ctx, other_seed = make_ctx(adapter, world, seed=5), make_ctx(adapter, world, seed=6)
    reference = set(world.two_stage["circle"][1])
    for name in ("random", "random_layer_matched"):
        first = get_baseline(name).select(ctx, "circle", 6)
        assert first == get_baseline(name).select(make_ctx(adapter, world, seed=5), "circle", 6)
        assert first != get_baseline(name).select(other_seed, "circle", 6)
        assert first != get_baseline(name).select(ctx, "square", 6)
        assert not reference & {(layer, u) for layer, u, _ in first}
        assert len(set(first)) == 6 and all(s is None for _, _, s in first)
    kept = get_baseline("random", exclude_reference=False).params(ctx, "circle", 6)
    assert kept["exclude_reference"] is False and kept["seed"] == 5 and kept["budget_of"] == "ts-circle"


def test_random_layer_matched_counts(adapter, world):
    ctx = make_ctx(adapter, world)
    reference = ctx.reference("star")
    chosen = get_baseline("random_layer_matched").select(ctx, "star", reference.size)
    counts: dict[int, int] = {}
    for layer, _, _ in chosen:
        counts[layer] = counts.get(layer, 0) + 1
    assert counts == reference.layer_counts()
    assert scale_counts({0: 1, 2: 3}, 8) == {0: 2, 2: 6}
    assert scale_counts({0: 1, 2: 3}, 6) == {0: 2, 2: 4}  # remainders tie at 0.5: the lower layer gets it
    assert scale_counts({0: 1, 2: 3}, 0) == {0: 0, 2: 0}
    assert fit_counts({0: 5}, np.array([3, 10, 10])) == {0: 3, 1: 2}
    with pytest.raises(KneuronError, match="not enough neurons"):
        fit_counts({0: 5}, np.array([3, 1]))


# ---------------------------------------------------------------------------------------------- stage baselines
def test_stage_baselines_equal_numpy_top_budget(adapter, world):
    with warehouse.connect(world.warehouse) as con:
        ctx = make_ctx(adapter, world, con=con)
        stats = con.sql("SELECT layer, unit, avg(d_max) AS a, avg(g_max) AS g FROM neuron_stats "
                        "WHERE concept = 'square' GROUP BY layer, unit").fetchnumpy()
        for name, column in (("stage1_only", "a"), ("stage2_only", "g")):
            chosen = get_baseline(name).select(ctx, "square", 7)
            order = np.lexsort((stats["unit"], stats["layer"], -stats[column]))[:7]
            assert [(layer, u) for layer, u, _ in chosen] == [(int(stats["layer"][i]), int(stats["unit"][i]))
                                                              for i in order]
            assert [s for _, _, s in chosen] == pytest.approx(stats[column][order], rel=1e-6)
    with pytest.raises(KneuronError, match="baseline 'stage1_only' needs the stored stage signals"):
        get_baseline("stage1_only").select(make_ctx(adapter, world), "square", 7)


def test_stage_baseline_ids_match_the_selection_module(adapter, world):
    from kneuron.queries.selection import SelectionConfig, run_selection, set_id_of

    with warehouse.connect(world.warehouse) as con:
        selection = run_selection(con, SelectionConfig(run_id=RUN_ID, concepts=("circle",)))
        rows = selection.neuron_sets.to_pylist()
        ts = [r for r in rows if r["method"] == "two_stage"]
        params = {k: v for k, v in json.loads(ts[0]["params_json"]).items() if k != "resolved"}
        reference = ReferenceSet(ts[0]["set_id"], params, tuple((r["layer"], r["unit"]) for r in ts))
        ctx = BaselineContext(adapter=adapter, run_id=RUN_ID, reference_sets={"circle": reference},
                              stage_ranking=StoredStageRanking(con, RUN_ID, {"circle": reference.params}))
        for name in ("stage1_only", "stage2_only"):
            stored = [r for r in rows if r["method"] == name]
            baseline = get_baseline(name)
            assert set_id_of(RUN_ID, "circle", name, baseline.params(ctx, "circle", reference.size)) \
                == stored[0]["set_id"]
            assert sorted((layer, u) for layer, u, _ in baseline.select(ctx, "circle", reference.size)) \
                == sorted((r["layer"], r["unit"]) for r in stored)


# ---------------------------------------------------------------------------------------------- all methods
@pytest.mark.parametrize("budget", [0, 1, 7])
def test_every_baseline_gives_exactly_the_budget(adapter, world, budget):
    with warehouse.connect(world.warehouse) as con:
        ctx = make_ctx(adapter, world, con=con)
        for name in sorted(set(BASELINES) - {"two_stage_specific"}):  # its pool C_k ∩ S_k may be smaller
            chosen = get_baseline(name, **({"steps": 4} if name == "dai" else {})).select(ctx, "circle", budget)
            assert len(chosen) == budget, name
            assert len({(layer, u) for layer, u, _ in chosen}) == budget, name
            assert all(0 <= layer < adapter.n_layers and 0 <= u < adapter.d_ff for layer, u, _ in chosen), name


def test_model_baselines_are_deterministic(adapter, world):
    for name in ("pan", "dai"):
        options = {"steps": 4} if name == "dai" else {}
        first = get_baseline(name, **options).select(make_ctx(adapter, world), "star", 5)
        assert first == get_baseline(name, **options).select(make_ctx(adapter, world), "star", 5)


def test_registry_and_errors(adapter, world):
    assert set(BASELINES) >= {"random", "random_layer_matched", "stage1_only", "stage2_only", "pan", "dai"}
    with pytest.raises(KneuronError, match="unknown baseline 'nope'"):
        get_baseline("nope")
    with pytest.raises(KneuronError, match="bad options for baseline 'pan'"):
        get_baseline("pan", steps=3)
    with pytest.raises(KneuronError, match="budget 999 exceeds"):
        get_baseline("random").select(make_ctx(adapter, world), "circle", 999)
    with pytest.raises(KneuronError, match="no two_stage neuron set for concept 'heart'"):
        get_baseline("random_layer_matched").select(make_ctx(adapter, world), "heart", 3)
    ctx = BaselineContext(adapter=adapter, dataset=world.dataset, run_id=RUN_ID)
    with pytest.raises(KneuronError, match="no identification images for concept 'circle'"):
        get_baseline("pan").select(ctx, "circle", 3)
    assert tuple(sorted(world.two_stage)) == CONCEPTS


# ---------------------------------------------------------------------------------------------- fragility / specificity
def test_random_nonmassive_avoids_massive_units_and_two_stage_and_is_nested(adapter, world):
    massive = [(0, 1), (1, 2), (2, 3)] + [(0, u) for u in range(10, 60)]
    ctx = make_ctx(adapter, world, seed=4)
    ctx.massive_units = lambda k: massive if k == 10.0 else []
    baseline = get_baseline("random_nonmassive")
    sets = {n: [(layer, u) for layer, u, _ in baseline.select(ctx, "circle", n)] for n in (1, 2, 4, 8, 16, 32)}
    blocked = set(massive) | set(world.two_stage["circle"][1])
    for n, chosen in sets.items():
        assert len(set(chosen)) == n and not set(chosen) & blocked
    for small, large in zip((1, 2, 4, 8, 16), (2, 4, 8, 16, 32), strict=True):
        assert set(sets[small]) <= set(sets[large])  # one permutation, its prefixes
    assert baseline.select(ctx, "circle", 8) == baseline.select(ctx, "circle", 8)
    other_seed = make_ctx(adapter, world, seed=5)
    other_seed.massive_units = ctx.massive_units
    assert baseline.select(other_seed, "circle", 8) != baseline.select(ctx, "circle", 8)
    assert baseline.params(ctx, "circle", 8) == {"budget": 8, "budget_of": "ts-circle", "exclude_reference": True,
                                                 "massive_k": 10.0, "seed": 4}
    with pytest.raises(KneuronError, match="needs the run's stored signals"):
        get_baseline("random_nonmassive").select(make_ctx(adapter, world), "circle", 3)
    with pytest.raises(KneuronError, match="k must be a number > 0"):
        get_baseline("random_nonmassive", k=0)


def test_two_stage_specific_is_the_ranking_within_the_specific_candidates(adapter, world):
    from kneuron import queries
    from kneuron.queries.selection import SelectionConfig, SpecificSpec, ThresholdSpec, query_params

    with warehouse.connect(world.warehouse) as con:
        ctx = make_ctx(adapter, world, con=con)
        baseline = get_baseline("two_stage_specific", specific="ratio1:0")
        params = query_params(SelectionConfig(), RUN_ID, ["square"], ThresholdSpec("auto"), ThresholdSpec("none"),
                              SpecificSpec("ratio", "a", 0.0), "pool")
        pool = queries.run(con, "two_stage", params).to_pylist()
        ranked = sorted(((r["layer"], r["unit"], r["score_g"]) for r in pool if r["layer"] is not None),
                        key=lambda n: (-n[2], n[0], n[1]))
        assert len(ranked) == pool[0]["n_specific"] > 3
        previous: set = set()
        for n in (1, 2, 3, len(ranked) + 5):
            chosen = baseline.select(ctx, "square", n)
            assert [(layer, u) for layer, u, _ in chosen] == [(layer, u) for layer, u, _ in ranked[:n]]
            assert [s for _, _, s in chosen] == pytest.approx([s for _, _, s in ranked[:n]], rel=1e-6)
            assert previous <= {(layer, u) for layer, u, _ in chosen}  # nested budgets
            previous = {(layer, u) for layer, u, _ in chosen}
        assert ctx.stage_ranking.pool_sizes[("square", len(ranked) + 5, "ratio1:0")] == len(ranked)
        assert baseline.params(ctx, "square", 3) == {**TWO_STAGE_PARAMS, "stage2": {"kind": "budget", "value": 3},
                                                     "budget": 3, "budget_of": "ts-square",
                                                     "specific": {"kind": "ratio", "stage": "a", "ratio": 0.0}}
        plain = BaselineContext(adapter=adapter, run_id=RUN_ID, reference_sets=ctx.reference_sets,
                                stage_ranking=StoredStageRanking(con, RUN_ID, {}))
        with pytest.raises(KneuronError, match="needs the stored stage signals"):
            baseline.select(plain, "square", 2)
    with pytest.raises(KneuronError, match="specific must be stage1"):
        get_baseline("two_stage_specific", specific="")


# ---------------------------------------------------------------------------------------------- Dai et al.: speed
def per_layer_ig_reference(adapter, images, targets, steps: int = 20) -> torch.Tensor:  # noqa: ANN001
    """The implementation before the KV-cached path (kept as the reference): per image and per layer, one
    forward+backward of the ``m`` scaled copies over the full sequence, logits of every position."""
    from kneuron.engine.signals.record import target_positions

    out = []
    for image, target in zip(images, targets, strict=True):
        prepared = adapter.prepare([image], targets=[list(target.tokens)])
        at = target_positions(prepared.prompt_length, [target])
        base = torch.stack(plain_hook_activations(adapter, image, target)).float()[None]  # [1, L, d_ff]
        repeated = adapter.prepare([image] * steps, targets=[list(target.tokens)] * steps)
        rows = torch.arange(steps)
        at_rep = at.repeat_interleave(steps)
        alphas = (torch.arange(steps, dtype=torch.float32) / steps)[:, None]
        attributions = torch.empty_like(base)
        for layer in range(adapter.n_layers):
            scaled = (alphas * base[:, layer].repeat_interleave(steps, dim=0)).requires_grad_(True)

            def hook(module, args, scaled=scaled):  # noqa: ANN001
                x = args[0].clone()
                x[rows, at_rep] = scaled.to(x.dtype)  # noqa: B023 (the hook lives for this iteration only)
                return (x,)

            handle = adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(hook)
            try:
                with torch.enable_grad():
                    logits = adapter.model(*repeated.args, **repeated.kwargs).logits[rows, at_rep].float()
                    prob = torch.softmax(logits, dim=-1)[rows, target.token_id]
                    (grad,) = torch.autograd.grad(prob.sum(), scaled)
            finally:
                handle.remove()
            attributions[:, layer] = base[:, layer] * grad.view(1, steps, -1).mean(dim=1)
        out.append(attributions[0])
    return torch.stack(out)


@pytest.mark.parametrize("variant", ["qformer", "patch"])
def test_dai_cached_and_full_paths_equal_the_per_layer_reference(variant, monkeypatch):  # noqa: ANN001
    from kneuron.engine.baselines import dai
    from tests.helpers.tiny_models import random_images

    model = tiny_minigpt4(variant, seed=2)
    images = random_images(3, seed=4)
    caption = model.encode("a red circle on the plain background")
    targets = [concept_target(model, caption, "circle"), concept_target(model, model.encode("blue square"), "star"),
               concept_target(model, model.encode("a green star above a blue circle"), "circle")]
    reference = per_layer_ig_reference(model, images, targets, steps=8)
    calls = {"full": 0}
    full = dai._ig_full

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003
        calls["full"] += 1
        return full(*args, **kwargs)

    monkeypatch.setattr(dai, "_ig_full", counted)
    cached = ig_attributions(model, images, targets, steps=8, max_rows=7)  # chunks that split layers
    assert calls["full"] == 0  # MiniGPT-4 takes the KV-cached path
    torch.testing.assert_close(cached, reference, rtol=1e-4, atol=1e-7)
    full_rows = ig_attributions(model, images, targets, steps=8, images_per_batch=2, max_rows=5, cached=False)
    assert calls["full"] == 2
    torch.testing.assert_close(full_rows, reference, rtol=1e-4, atol=1e-7)


def test_dai_selects_the_same_sets_as_the_per_layer_reference_on_the_bundled_model(tmp_path):  # noqa: ANN001
    from kneuron.engine.data.coco import CocoDataset
    from kneuron.engine.data.world import WorldConfig, generate_world
    from kneuron.engine.interventions.caption import caption_images
    from kneuron.engine.models import load_model

    model = load_model("tiny-shapes-qformer")
    world = generate_world(tmp_path / "w", WorldConfig(seed=5, n_train=0, n_val=0, n_test=24), splits=("test",))
    data = CocoDataset(world, "test")
    for concept in ("circle", "triangle"):
        ids = data.images_with(concept)[:6]
        images = [data.load_image(i) for i in ids]
        captions = caption_images(model, images).token_ids
        targets = [concept_target(model, ids_, concept) for ids_ in captions]
        reference = per_layer_ig_reference(model, images, targets).double().numpy()
        fast = ig_attributions(model, images, targets).double().numpy()
        np.testing.assert_allclose(fast, reference, rtol=1e-3, atol=1e-6 * np.abs(reference).max())
        for budget in (3, 5, 10, 32):
            chosen = [(layer, unit) for layer, unit, _ in refine(fast, budget)[0]]
            expected = [(layer, unit) for layer, unit, _ in refine(reference, budget)[0]]
            assert chosen == expected, (concept, budget)


def test_dai_runs_under_no_grad(adapter, world):  # noqa: ANN001
    images = [world.dataset.load_image(i) for i in world.ident["star"][:1]]
    targets = two_targets(adapter)[:1]
    expected = ig_attributions(adapter, images, targets, steps=4)
    with torch.no_grad():  # a caller's no_grad does not cut the gradient the attribution needs
        torch.testing.assert_close(ig_attributions(adapter, images, targets, steps=4), expected)
        torch.testing.assert_close(ig_attributions(adapter, images, targets, steps=4, cached=False), expected,
                                   rtol=1e-4, atol=1e-7)
