"""`kneuron.engine.reporting.budget_plots`: the budget-curve figure is a PNG of the expected size, and bad input is one
error line."""
from __future__ import annotations

import pytest
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.reporting.budget_plots import budget_curve_plot

ROWS = [{"method": m, "budget": n, "target_mention_drop": t, "other_mention_drop": o, "n_neurons": float(n)}
        for m, curve in (("two_stage", [(1, 0.0, 0.0), (4, 0.1, 0.02), (16, 0.3, 0.05)]),
                         ("random", [(1, 0.0, 0.0), (4, 0.0, 0.01), (16, float("nan"), 0.02)]))
        for n, t, o in curve]


def test_budget_curve_plot_writes_a_png(tmp_path):
    path = budget_curve_plot(ROWS, tmp_path / "sub" / "curves.png", methods=["random"])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1500, 460)
    assert path.stat().st_size < 200_000


def test_budget_curve_plot_empty_and_bad_input(tmp_path):
    with Image.open(budget_curve_plot([], tmp_path / "empty.png")) as image:
        assert image.size == (1500, 460)
    with pytest.raises(KneuronError, match=r"budget curves: missing columns \['other_mention_drop'\]"):
        budget_curve_plot([{"method": "x", "budget": 1, "target_mention_drop": 0.0}], tmp_path / "bad.png")
