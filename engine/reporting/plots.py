"""Report figures as PNG files (matplotlib, Agg canvas; no pyplot state, no display needed).

Every function takes plain data, a pyarrow Table, a pandas DataFrame, a list of row dicts or a dict of
columns, with the columns of the bundled query it is meant for, and writes one PNG:

- `layer_distribution_plot`: ``queries/layer_distribution.sql`` rows (concept, layer, n_neurons) of one
  method: stacked bars, one per concept, a segment per layer.
- `overlap_matrix_plot`: ``queries/concept_overlap.sql`` rows (concept_a, concept_b, jaccard): the symmetric
  Jaccard matrix of the concepts' neuron sets.
- `suppression_plot`: rows (method, group, metric, value), e.g. the drops of `kneuron.engine.eval.summary`: one panel
per
  metric with target vs other bars per method, axes fitted to the values, the legend below the panels;
  optional mention-rate rows (method, group, before, after) add a panel of mention-rate drops.
- `with_colour_bar` / `colour_bar`: the colour bar of a heatmap figure
(`kneuron.engine.signals.heatmap.heatmap_figure`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from kneuron.engine.errors import KneuronError
from kneuron.engine.reporting.document import number

GROUP_COLOURS = {"target": "#d62728", "other": "#1f77b4"}
DPI = 100


def records(data: Any) -> list[dict[str, Any]]:
    """Rows of ``data`` (pyarrow Table, pandas DataFrame, list of dicts, dict of columns) as a list of dicts."""
    if data is None:
        return []
    if hasattr(data, "to_pylist"):  # pyarrow Table / RecordBatch
        return list(data.to_pylist())
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        return list(data.to_dict(orient="records"))
    if isinstance(data, Mapping):
        columns = list(data)
        lengths = {len(data[c]) for c in columns}
        if len(lengths) > 1:
            raise KneuronError(f"columns of different lengths: { {c: len(data[c]) for c in columns} }")
        n = lengths.pop() if lengths else 0
        return [{c: data[c][i] for c in columns} for i in range(n)]
    return [dict(row) for row in data]


def need_columns(rows: list[dict[str, Any]], columns: Sequence[str], what: str) -> None:
    """`KneuronError` naming the columns of ``columns`` that ``rows`` lack (``what``: the figure)."""
    if rows and (missing := [c for c in columns if c not in rows[0]]):
        raise KneuronError(f"{what}: missing columns {missing} (have {sorted(rows[0])})")


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure of ``width`` x ``height`` inches on an Agg canvas (no pyplot state)."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, out: str | Path) -> Path:
    """Write ``figure`` as a PNG to ``out`` (folders made; no software metadata); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out


def empty_panel(figure: Figure, message: str) -> None:
    """One blank panel that says ``message`` (a figure without data)."""
    ax = figure.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    ax.set_axis_off()


# ---------------------------------------------------------------------------------------------- layers
def layer_distribution_plot(data: Any, out: str | Path, n_layers: int | None = None,
                            title: str = "Layer distribution of the knowledge neurons") -> Path:
    """Stacked bars: one bar per concept, its height the set size, a coloured segment per layer.

    data: rows with ``concept``, ``layer``, ``n_neurons`` (one method). n_layers: colour scale size
    (default: highest layer + 1).
    """
    rows = records(data)
    need_columns(rows, ("concept", "layer", "n_neurons"), "layer distribution")
    concepts = sorted({str(r["concept"]) for r in rows})
    layers = sorted({int(r["layer"]) for r in rows})
    top = max(n_layers or 0, (layers[-1] + 1) if layers else 1)
    counts = np.zeros((len(concepts), top))
    for r in rows:
        counts[concepts.index(str(r["concept"])), int(r["layer"])] += float(r["n_neurons"])
    figure = new_figure(max(6.0, 0.45 * len(concepts) + 3.0), 4.5)
    if not concepts:
        empty_panel(figure, "no neuron sets")
        return save_png(figure, out)
    ax = figure.add_subplot(1, 1, 1)
    palette = colormaps["viridis"].resampled(top)
    x = np.arange(len(concepts))
    bottom = np.zeros(len(concepts))
    for layer in range(top):
        if counts[:, layer].any():
            ax.bar(x, counts[:, layer], bottom=bottom, color=palette(layer), width=0.75, edgecolor="white",
                   linewidth=0.3)
            bottom += counts[:, layer]
    ax.set_xticks(x, concepts, rotation=45 if len(concepts) > 6 else 0, ha="right" if len(concepts) > 6 else "center")
    ax.set_ylabel("neurons in the set")
    ax.set_title(title)
    norm = BoundaryNorm(np.arange(-0.5, top + 0.5), top)
    mappable = ax.scatter([], [], c=[], cmap=ListedColormap([palette(i) for i in range(top)]), norm=norm)
    bar = figure.colorbar(mappable, ax=ax, ticks=range(0, top, max(1, math.ceil(top / 12))))
    bar.set_label("layer")
    figure.tight_layout()
    return save_png(figure, out)


# ---------------------------------------------------------------------------------------------- overlap
def overlap_matrix(data: Any) -> tuple[list[str], np.ndarray]:
    """(concepts, symmetric ``[C, C]`` Jaccard matrix with ones on the diagonal) from overlap rows."""
    rows = records(data)
    need_columns(rows, ("concept_a", "concept_b", "jaccard"), "overlap matrix")
    concepts = sorted({str(r["concept_a"]) for r in rows} | {str(r["concept_b"]) for r in rows})
    matrix = np.eye(len(concepts))
    for r in rows:
        i, j = concepts.index(str(r["concept_a"])), concepts.index(str(r["concept_b"]))
        matrix[i, j] = matrix[j, i] = float(r["jaccard"])
    return concepts, matrix


def overlap_matrix_plot(data: Any, out: str | Path,
                        title: str = "Overlap of the concepts' neuron sets (Jaccard)") -> Path:
    """Heatmap of the Jaccard matrix (values written in the cells when there are at most 15 concepts)."""
    concepts, matrix = overlap_matrix(data)
    side = max(4.5, 0.45 * len(concepts) + 2.5)
    figure = new_figure(side + 1.0, side)
    if len(concepts) < 2:
        empty_panel(figure, "fewer than two concepts with a neuron set")
        return save_png(figure, out)
    ax = figure.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="magma", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(concepts)), concepts, rotation=45, ha="right")
    ax.set_yticks(range(len(concepts)), concepts)
    if len(concepts) <= 15:
        for i in range(len(concepts)):
            for j in range(len(concepts)):
                ax.text(j, i, number(float(matrix[i, j])), ha="center", va="center", fontsize=7,
                        color="black" if matrix[i, j] > 0.6 else "white")
    figure.colorbar(image, ax=ax, label="Jaccard |A ∩ B| / |A ∪ B|")
    ax.set_title(title)
    figure.tight_layout()
    return save_png(figure, out)


# ---------------------------------------------------------------------------------------------- suppression
def fitted_limits(values: Sequence[float], pad: float = 0.12) -> tuple[float, float]:
    """Axis limits for bars starting at 0: from min(0, values) to max(0, values), padded by ``pad`` of the
    range (at least 1e-3), so small differences fill the panel instead of a fixed 0-1 axis."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    low, high = min([0.0, *finite]), max([0.0, *finite])
    margin = max(pad * (high - low), 1e-3)
    return (low - margin if low < 0 else 0.0), (high + margin if high > 0 or low == 0 else 0.0)


def suppression_figure(data: Any, mention_rates: Any = None,
                       title: str = "Suppression: drops vs the unmodified model's captions",
                       ylabel: str = "drop (before − after)") -> Figure:
    """The figure of `suppression_plot`: one panel per metric, target and other bars per method, each panel's
    axis fitted to its values (`fitted_limits`), one legend for all panels below them, outside every bar."""
    rows = records(data)
    need_columns(rows, ("method", "group", "metric", "value"), "suppression")
    mentions = records(mention_rates)
    need_columns(mentions, ("method", "group", "before", "after"), "mention rates")
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    methods = list(dict.fromkeys([str(r["method"]) for r in rows] + [str(r["method"]) for r in mentions]))
    panels = metrics + (["mention rate drop"] if mentions else [])
    n_cols = min(len(panels), 2) if panels else 1
    n_rows = math.ceil(len(panels) / n_cols) if panels else 1
    panel_width = max(4.2, 0.55 * len(methods) + 1.6)
    figure = new_figure(panel_width * n_cols + 0.4 if panels else 6.0, 3.6 * n_rows + 0.9)
    figure.set_layout_engine("constrained")  # rotated labels, titles and the outside legend never overlap
    if not panels:
        empty_panel(figure, "no suppression results")
        return figure
    x = np.arange(len(methods))
    width = 0.38
    for index, panel in enumerate(panels):
        ax = figure.add_subplot(n_rows, n_cols, index + 1)
        heights_all: list[float] = []
        for offset, group in ((-width / 2, "target"), (width / 2, "other")):
            if panel == "mention rate drop":
                values = {str(r["method"]): float(r["before"]) - float(r["after"]) for r in mentions
                          if r["group"] == group}
            else:
                values = {str(r["method"]): float(r["value"]) for r in rows
                          if r["metric"] == panel and r["group"] == group and r["value"] is not None}
            heights = [values.get(m, np.nan) for m in methods]
            heights_all += heights
            ax.bar(x + offset, heights, width, label=f"{group} images", color=GROUP_COLOURS[group])
        ax.set_xticks(x, methods, rotation=30 if len(methods) > 3 else 0, ha="right" if len(methods) > 3 else "center")
        ax.set_title(panel)
        ax.set_ylim(*fitted_limits(heights_all))
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        if index % n_cols == 0:
            ax.set_ylabel(ylabel)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.suptitle(title)
    figure.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    return figure


def suppression_plot(data: Any, out: str | Path, mention_rates: Any = None,
                     title: str = "Suppression: drops vs the unmodified model's captions",
                     ylabel: str = "drop (before − after)") -> Path:
    """One panel per metric: for each method, a bar on target-concept images and one on other images (by
    default the drop of the score, before - after: tall on target and short on other = specific suppression).
    With ``mention_rates`` (rows: method, group, before, after) a last panel shows the drop of the concept's
    mention rate, before - after. Axes are fitted to each panel's values; the legend sits below the panels.

    data: rows with ``method``, ``group`` (target | other), ``metric``, ``value`` (means).
    """
    return save_png(suppression_figure(data, mention_rates, title, ylabel), out)


# ---------------------------------------------------------------------------------------------- colour bar
def colour_bar(height: int, cmap: str = "jet", bar_width: int = 14, label_width: int = 44,
               ticks: Sequence[float] = (1.0, 0.5, 0.0)) -> Image.Image:
    """A vertical colour bar ``[height, bar_width + label_width]`` of ``cmap``: the top is 1 (the highest heat
    of the figure's common scale), the bottom 0 (its lowest), ``ticks`` labelled on the right."""
    from matplotlib import colormaps

    values = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
    colours = np.rint(colormaps[cmap](values)[..., :3] * 255.0).astype(np.uint8)
    bar = Image.new("RGB", (bar_width + label_width, height), (255, 255, 255))
    bar.paste(Image.fromarray(colours, mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(bar)
    draw.rectangle((0, 0, bar_width - 1, height - 1), outline=(80, 80, 80))
    for tick in ticks:
        y = round((1.0 - tick) * (height - 1))
        draw.line((bar_width, y, bar_width + 3, y), fill=(0, 0, 0))
        draw.text((bar_width + 5, min(max(0, y - 6), height - 12)), f"{tick:.1f}", fill=(0, 0, 0))
    return bar


def with_colour_bar(figure: Image.Image, gap: int = 8, label_h: int = 18, label: str = "heat") -> Image.Image:
    """``figure`` (a `side_by_side` of heatmap overlays with its default ``gap`` and labels) with a colour bar of
    the overlays' colormap to the right of the panels, as tall as they are and labelled ``label``."""
    height = figure.height - label_h - 2 * gap
    bar = colour_bar(height)
    out = Image.new("RGB", (figure.width + bar.width + gap, figure.height), (255, 255, 255))
    out.paste(figure, (0, 0))
    out.paste(bar, (figure.width, gap + label_h))
    ImageDraw.Draw(out).text((figure.width, gap // 2), label, fill=(0, 0, 0))
    return out
