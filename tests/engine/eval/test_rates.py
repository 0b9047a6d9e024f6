"""`kneuron.engine.eval.rates`: pooled hit-rate intervals against a loop reference, concept means and paired lifts."""
from __future__ import annotations

import numpy as np
import pytest

from kneuron.engine.eval.rates import concept_intervals, paired_differences, pooled_interval
from kneuron.engine.eval.uncertainty import concept_draws, image_draws


def test_pooled_interval_equals_a_loop_reference() -> None:
    hits = {"a": [1, 0, 0, 1, 1], "b": [0, 0, 0], "c": [1, 1, 0, 0]}
    got = pooled_interval(hits, n_boot=300, seed=4)
    assert got["estimate"] == pytest.approx(5 / 12) and (got["n"], got["n_concepts"]) == (12, 3)
    flat = [x for v in hits.values() for x in v]
    codes = [i for i, v in enumerate(hits.values()) for _ in v]
    items = [sum(w * x for w, x in zip(row, flat, strict=True)) / sum(row)
             for row in image_draws(np.array(codes), 300, 4)]
    groups = list(hits.values())
    concepts = [sum(k * sum(g) for k, g in zip(row, groups, strict=True))
                / sum(k * len(g) for k, g in zip(row, groups, strict=True))
                for row in concept_draws(3, 300, 4)]
    assert got["images_low"] == pytest.approx(np.quantile(items, 0.025))
    assert got["concepts_high"] == pytest.approx(np.quantile(concepts, 0.975))
    assert np.isnan(pooled_interval({})["estimate"])


def test_concept_means_and_paired_differences() -> None:
    rng = np.random.default_rng(0)
    random_set = {c: list(rng.normal(0.0, 0.1, 20)) for c in ("x", "y")}
    concept_set = {c: [v + 0.5 for v in vals] for c, vals in random_set.items()}
    same = {c: list(vals) for c, vals in random_set.items()}
    columns = {"concept": concept_set, "random": random_set, "same": same}
    means = concept_intervals(columns, n_boot=200)
    assert means["concept"]["estimate"] == pytest.approx(np.mean([np.mean(v) for v in concept_set.values()]))
    paired = paired_differences(columns, "random", n_boot=200)
    assert paired["concept"]["estimate"] == pytest.approx(0.5) and paired["concept"]["images_low"] > 0.49
    assert paired["concept"]["p_value"] < 0.01 and paired["same"]["p_value"] == 1.0
    assert paired["same"]["estimate"] == 0.0 and paired["concept"]["n"] == 40
