"""`engine.plots`: the report's figures (layer distribution, concept overlap, suppression) are drawn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.plots import layer_distribution_plot, overlap_matrix, overlap_matrix_plot, suppression_plot


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
    from engine.errors import KneuronError

    with pytest.raises(KneuronError, match="missing columns"):
        layer_distribution_plot([{"concept": "a"}], tmp_path / "x.png")
