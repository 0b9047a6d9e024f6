"""`ReportConfig`: what goes into the report (read by the report step and its model sections)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    """What goes into the report.

    run_id: the run (None: the latest). method: the neuron-set method shown in heatmaps, plots and decoding
    (contrast and hit rates cover every method of the run). set_ids: ``method`` sets shown instead of their
    concepts' current sets (at most one per concept). model / device: override the run's model / where it
    runs; with_model=False skips heatmaps, contrast and decoding. data_root / split: override the run's
    dataset. heatmap_images: images per concept drawn; contrast_images: images per concept in the contrast
    share; decode_top: neurons decoded per concept; k: tokens per neuron; max_concepts: concepts with heatmaps
    and decoded tokens (None: all). n_probes: Q-Former Jacobian probes; heat_value: ``magnitude`` | ``signed``
    (see `kneuron.engine.signals.heatmap`).
    """

    run_id: str | None = None
    method: str = "two_stage"
    set_ids: tuple[str, ...] = ()
    model: str | None = None
    device: str = "auto"
    with_model: bool = True
    data_root: str | None = None
    split: str | None = None
    heatmap_images: int = 2
    contrast_images: int = 16
    decode_top: int = 5
    k: int = 10
    max_concepts: int | None = None
    n_probes: int = 16
    heat_value: str = "magnitude"
    title: str = "kneuron report"
