"""`kneuron.engine.signals.fragility`: exact activation magnitudes against a plain-hook capture, the massive-unit rule
by hand,
and the caption change rate of single-unit zeroing against direct captioning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.signals.fragility import activation_magnitude, caption_change_rate, fragile_units, massive_mask
from tests.helpers.eval_fixtures import build_eval_world
from tests.helpers.tiny_models import tiny_minigpt4


@pytest.fixture(scope="module")
def adapter():
    return tiny_minigpt4()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    world = build_eval_world(tmp_path_factory.mktemp("fragility"), with_stats=False, n_images=8)
    return [world.dataset.load_image(i) for i in world.dataset.image_ids()[:5]]


def test_activation_magnitude_is_the_mean_absolute_activation_at_the_image_tokens(adapter, images):
    captured: list[list[torch.Tensor]] = [[] for _ in range(adapter.n_layers)]
    handles = [adapter.neuron_module(adapter.model, layer).register_forward_pre_hook(
        lambda module, args, layer=layer: captured[layer].append(args[0].detach().float()))
        for layer in range(adapter.n_layers)]
    try:
        prepared = adapter.prepare(images)
        with torch.no_grad():
            adapter.model(*prepared.args, **prepared.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    at = prepared.positions("image")
    want = np.stack([c[0][:, at].abs().mean(dim=(0, 1)).double().numpy() for c in captured])
    got = activation_magnitude(adapter, images, batch_size=2)  # batches of 2, 2, 1: the same mean
    assert got.shape == (adapter.n_layers, adapter.d_ff)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_massive_mask_by_hand():
    # median 1.0; ln: six 0, ln 2, ln 100, ln 9 -> Q1 0, Q3 = ln 2 + 0.25 (ln 9 - ln 2) = 1.069..., fence 4.28
    magnitude = np.array([[1.0, 1.0, 1.0, 100.0], [2.0, 1.0, 1.0, 9.0]])
    assert massive_mask(magnitude, 10).tolist() == [[False, False, False, True], [False, False, False, False]]
    assert massive_mask(magnitude, 1.5).tolist() == [[False, False, False, True], [False, False, False, False]]
    magnitude[0, 3] = 60.0  # ln 60 = 4.09 < fence: above 10 x the median, yet inside the far-out fence
    assert not massive_mask(magnitude, 10).any()


def test_massive_mask_flags_planted_units_not_the_tail():
    # a skewed (log-normal) bulk of 4 x 2048 units with 3 planted units 1000x the median
    rng = np.random.default_rng(0)
    magnitude = rng.lognormal(mean=0.0, sigma=1.2, size=(4, 2048))
    planted = [(0, 5), (2, 700), (3, 2047)]
    for layer, unit in planted:
        magnitude[layer, unit] = 1000.0 * np.median(magnitude)
    tail = magnitude > 10 * np.median(magnitude)
    assert tail.sum() > 100  # the old rule (k x the median alone) flags a whole tail
    got = massive_mask(magnitude, 10)
    assert sorted(zip(*map(list, np.nonzero(got)), strict=True)) == planted


def test_caption_change_rate_equals_direct_captioning(images):
    loud = tiny_minigpt4()
    with torch.no_grad():
        loud.down_proj_weight(0)[:, 3] *= 300.0  # unit 0:3 now writes a huge vector: zeroing it changes captions
    units = [(0, 3), (1, 7), (0, 3)]
    rates = caption_change_rate(loud, images, units, batch_size=2, max_new_tokens=6)
    before = caption_images(loud, images, None, max_new_tokens=6).texts
    assert sorted(rates) == [(0, 3), (1, 7)]
    for (layer, unit), rate in rates.items():
        after = caption_images(loud, images, {layer: [unit]}, max_new_tokens=6).texts
        assert rate == sum(a != b for a, b in zip(before, after, strict=True)) / len(images)
    assert rates == {(0, 3): 1.0, (1, 7): 0.0}
    assert fragile_units(rates) == [(0, 3)]
    assert fragile_units({(0, 1): 0.5, (0, 2): 0.49, (1, 0): 1.0}) == [(0, 1), (1, 0)]
