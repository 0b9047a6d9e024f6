"""`kneuron.engine.eval.uncertainty`: the vectorised bootstrap and sign-flip test against slow loop references."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kneuron.engine.eval.uncertainty import (
    bootstrap,
    cell_values,
    concept_draws,
    estimate,
    holm,
    image_draws,
    sign_flip_pvalue,
)

C, G = 3, 2


def data(seed: int = 0, n: int = 40, k: int = 3):
    rng = np.random.default_rng(seed)
    concept = np.repeat(np.arange(C), n // C + 1)[:n]
    group = np.tile([0, 1], n)[:n]
    num = rng.integers(-1, 2, size=(n, k)).astype(float)
    den = rng.integers(0, 3, size=(n, k)).astype(float)
    return num, den, concept, group


def t_minus_o(cells: np.ndarray) -> np.ndarray:
    """[..., C, G, K] -> [..., C, K + 1]: per column target minus other, and column 0's target alone."""
    return np.concatenate([cells[..., 0, :] - cells[..., 1, :], cells[..., 0, :1]], axis=-1)


def slow_estimate(num, den, concept, group, weights=None):  # noqa: ANN001
    """Per concept and group the ratio of weighted sums, per concept T - O, mean over concepts: plain loops."""
    n, k = num.shape
    weights = np.ones(n) if weights is None else weights
    out = []
    for m in range(k + 1):
        col = m if m < k else 0
        per_concept = []
        for c in range(C):
            ratios = []
            for g in range(G):
                s = sum(weights[i] * num[i, col] for i in range(n) if concept[i] == c and group[i] == g)
                d = sum(weights[i] * den[i, col] for i in range(n) if concept[i] == c and group[i] == g)
                ratios.append(s / d if d > 0 else math.nan)
            value = ratios[0] if m == k else ratios[0] - ratios[1]
            per_concept.append(value)
        kept = [v for v in per_concept if not math.isnan(v)]
        out.append(sum(kept) / len(kept) if kept else math.nan)
    return np.array(out)


def slow_quantile(values, q):  # noqa: ANN001
    kept = sorted(v for v in values if not math.isnan(v))
    position = q * (len(kept) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    return kept[lo] + (kept[hi] - kept[lo]) * (position - lo)


def test_cell_values_and_estimate_equal_loops() -> None:
    num, den, concept, group = data()
    cells = cell_values(num, den, concept, group, C, G)
    for c, g, k in itertools.product(range(C), range(G), range(num.shape[1])):
        rows = (concept == c) & (group == g)
        d = den[rows, k].sum()
        expected = num[rows, k].sum() / d if d else math.nan
        assert cells[c, g, k] == pytest.approx(expected, nan_ok=True)
    np.testing.assert_allclose(estimate(num, den, concept, group, C, G, t_minus_o),
                               slow_estimate(num, den, concept, group), equal_nan=True)


def test_image_bootstrap_equals_loop_reference() -> None:
    num, den, concept, group = data(1)
    got = bootstrap(num, den, concept, group, C, G, t_minus_o, "images", n_boot=200, seed=7)
    counts = image_draws(concept * G + group, 200, 7)
    # every draw keeps each cell's size
    for c, g in itertools.product(range(C), range(G)):
        rows = (concept == c) & (group == g)
        assert np.all(counts[:, rows].sum(axis=1) == rows.sum())
    replicates = np.array([slow_estimate(num, den, concept, group, weights=w) for w in counts])
    for m in range(num.shape[1] + 1):
        assert got.low[m] == pytest.approx(slow_quantile(replicates[:, m], 0.025))
        assert got.high[m] == pytest.approx(slow_quantile(replicates[:, m], 0.975))
    np.testing.assert_allclose(got.estimate, slow_estimate(num, den, concept, group), equal_nan=True)


def test_concept_bootstrap_equals_loop_reference() -> None:
    num, den, concept, group = data(2)
    got = bootstrap(num, den, concept, group, C, G, t_minus_o, "concepts", n_boot=150, seed=3)
    draws = concept_draws(C, 150, 3)
    # each concept's own value (estimate over its rows alone), then per draw the mean over the drawn concepts
    per = np.array([slow_estimate(num[concept == c], den[concept == c], np.zeros((concept == c).sum(), int),
                                  group[concept == c]) for c in range(C)])  # [C, M]
    replicates = []
    for draw in draws:
        picked = [per[c] for c in range(C) for _ in range(int(draw[c]))]
        replicates.append([np.mean([v[m] for v in picked if not math.isnan(v[m])])
                           if any(not math.isnan(v[m]) for v in picked) else math.nan
                           for m in range(per.shape[1])])
    replicates = np.array(replicates)
    for m in range(num.shape[1] + 1):
        assert got.low[m] == pytest.approx(slow_quantile(replicates[:, m], 0.025))
        assert got.high[m] == pytest.approx(slow_quantile(replicates[:, m], 0.975))


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    num, den, concept, group = data(3, n=90)
    den = np.ones_like(den)
    a = bootstrap(num, den, concept, group, C, G, t_minus_o, "images", n_boot=300, seed=11)
    b = bootstrap(num, den, concept, group, C, G, t_minus_o, "images", n_boot=300, seed=11)
    np.testing.assert_array_equal(a.low, b.low)
    assert np.all(a.low <= a.estimate) and np.all(a.estimate <= a.high) and np.all(a.low < a.high)
    with pytest.raises(ValueError, match="scheme must be one of"):
        bootstrap(num, den, concept, group, C, G, t_minus_o, "rows")


def test_exact_sign_flip_equals_enumeration() -> None:
    rng = np.random.default_rng(5)
    n = 8
    concept = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    group = np.array([0, 1, 0, 0, 1, 0, 1, 1])
    num = rng.normal(size=(n, 2)) + 0.4
    den = np.ones((n, 2))
    got = sign_flip_pvalue(num, den, concept, group, C, G, t_minus_o, n_perm=1000)
    observed = slow_estimate(num, den, concept, group)
    count = np.zeros(3)
    for signs in itertools.product((1.0, -1.0), repeat=n):
        flipped = slow_estimate(num * np.array(signs)[:, None], den, concept, group)
        count += np.abs(flipped) >= np.abs(observed) - 1e-12
    np.testing.assert_allclose(got, count / 2 ** n)


def test_sign_flip_detects_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(9)
    n = 120
    concept, group = np.repeat(np.arange(C), n // C), np.zeros(n, int)
    shifted = rng.normal(0.5, 1.0, size=(n, 1))
    half = rng.normal(0.0, 1.0, size=(n // 2, 1))
    centred = np.concatenate([half, -half])  # one concept holds both: its mean is exactly 0
    first = lambda cells: cells[..., 0, :]  # noqa: E731
    assert sign_flip_pvalue(shifted, np.ones((n, 1)), concept, group, C, 1, first, n_perm=999, seed=1)[0] < 0.01
    # values symmetric around 0 (each value and its negative): the observed mean is 0, every flip is as extreme
    one = np.zeros(n, int)
    assert sign_flip_pvalue(centred, np.ones((n, 1)), one, group, C, 1, first, n_perm=999, seed=1)[0] == 1.0


def test_holm_equals_the_step_down_definition() -> None:
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 0.04, max(0.04, 0.09), max(0.09, 0.08), max(0.09, 0.5)
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])
