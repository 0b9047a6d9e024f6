"""`kneuron.engine.reporting.plots`: the report's figures (layer distribution, concept overlap, suppression) are
drawn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kneuron.engine.reporting.plots import (
    layer_distribution_plot,
    overlap_matrix,
    overlap_matrix_plot,
    suppression_plot,
)


def not_blank(path: Path) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def test_plots(tmp_path) -> None:  # noqa: ANN001
    import pandas as pd
    import pyarrow as pa

    layers = pa.table({"concept": ["a", "a", "b"], "layer": [0, 3, 3], "n_neurons": [2, 5, 1]})
    assert not_blank(layer_distribution_plot(layers, tmp_path / "l.png", n_layers=4))
    overlap = pd.DataFrame({"concept_a": ["a", "a", "b"], "concept_b": ["b", "c", "c"], "jaccard": [0.5, 0.0, 0.25]})
    concepts, matrix = overlap_matrix(overlap)
    assert concepts == ["a", "b", "c"]
    np.testing.assert_allclose(matrix, [[1, 0.5, 0], [0.5, 1, 0.25], [0, 0.25, 1]])
    assert not_blank(overlap_matrix_plot(overlap, tmp_path / "o.png"))
    sup = [{"method": m, "group": g, "metric": k, "value": v} for m, g, k, v in
           [("two_stage", "target", "bleu4", 0.2), ("two_stage", "other", "bleu4", 0.9),
            ("random", "target", "bleu4", 0.8), ("random", "other", "bleu4", 0.85)]]
    drops = {"method": ["two_stage"], "group": ["target"], "before": [0.9], "after": [0.1]}
    path = suppression_plot(sup, tmp_path / "s.png", mention_rates=drops)
    assert not_blank(path) and Image.open(path).width > 600
    assert Image.open(suppression_plot([], tmp_path / "e.png")).size[0] > 0
    from kneuron.engine.errors import KneuronError

    with pytest.raises(KneuronError, match="missing columns"):
        layer_distribution_plot([{"concept": "a"}], tmp_path / "x.png")


def test_suppression_axes_fit_the_data_and_the_legend_covers_no_bar() -> None:
    from kneuron.engine.reporting.plots import fitted_limits, suppression_figure

    assert fitted_limits([0.02, 0.05]) == (0.0, pytest.approx(0.05 + 0.12 * 0.05))
    low, high = fitted_limits([-0.01, 0.03])
    assert low == pytest.approx(-0.01 - 0.0048) and high == pytest.approx(0.03 + 0.0048)
    assert fitted_limits([0.0, float("nan"), None]) == (0.0, 1e-3)
    rows = [{"method": m, "group": g, "metric": "BLEU-4", "value": v} for m, g, v in
            [("two_stage", "target", 0.021), ("two_stage", "other", 0.040), ("random", "target", 0.023),
             ("random", "other", 0.028)]]
    mentions = [{"method": "two_stage", "group": "target", "before": 0.97, "after": 0.96},
                {"method": "two_stage", "group": "other", "before": 0.95, "after": 0.95}]
    figure = suppression_figure(rows, mention_rates=mentions)
    bleu, mention = figure.axes
    assert bleu.get_ylim()[1] < 0.05 and mention.get_ylim()[1] < 0.02  # not a 0-1 axis: differences show
    figure.canvas.draw()
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["target images", "other images"]
    box = legend.get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in figure.axes)


def test_heatmap_colour_bar(tmp_path) -> None:  # noqa: ANN001
    from kneuron.engine.reporting.plots import colour_bar, with_colour_bar

    bar = np.asarray(colour_bar(200), dtype=np.int16)
    assert bar.shape == (200, 58, 3)
    top, bottom = bar[2, 7], bar[-3, 7]  # jet: dark red at 1.0 (top), dark blue at 0.0 (bottom)
    assert top[0] > 100 and top[2] < 40 and bottom[2] > 100 and bottom[0] < 40
    assert (bar[:, 20:] < 128).any()  # tick labels drawn
    figure = Image.new("RGB", (300, 200 + 18 + 16), (255, 255, 255))
    out = with_colour_bar(figure)
    assert out.size == (300 + 58 + 8, figure.height)
    assert np.asarray(out)[18 + 8 + 2, 300 + 7][0] > 100  # the bar starts where the panels start
