"""Baseline neuron selectors, compared with the two-stage sets at the same budget |N_k|.

``random`` / ``random_layer_matched`` / ``random_nonmassive`` (seeded controls; the last avoids the run's
massive units), ``stage1_only`` / ``stage2_only`` (single-stage ablations from the selection module),
``two_stage_specific`` (the two-stage ranking within the concept-specific candidates), ``pan`` (Pan et al.
2024 contribution score) and ``dai`` (Dai et al. 2022 integrated gradients). All implement `Baseline`;
``get_baseline(name, **options)`` gives one.
"""
from kneuron.engine.baselines.base import (
    BASELINES,
    Baseline,
    BaselineContext,
    ReferenceSet,
    ScoredNeuron,
    concept_target,
    register,
)
from kneuron.engine.baselines.registry import get_baseline

__all__ = ["BASELINES", "Baseline", "BaselineContext", "ReferenceSet", "ScoredNeuron", "concept_target",
           "get_baseline", "register"]
