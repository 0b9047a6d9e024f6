"""The baselines by name. Importing this module registers every bundled baseline (one module per method,
each decorated with `register`), so `get_baseline` and `BASELINES` see them all."""
from __future__ import annotations

from typing import Any

from kneuron.engine.baselines import dai, nonmassive, pan, random, specific, stage  # noqa: F401  (register them)
from kneuron.engine.baselines.base import BASELINES, Baseline
from kneuron.engine.errors import KneuronError

__all__ = ["BASELINES", "get_baseline"]


def get_baseline(name: str, **options: Any) -> Baseline:
    """An instance of the registered baseline ``name`` with ``options`` (one-line error for unknown names)."""
    if name not in BASELINES:
        raise KneuronError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")
    try:
        return BASELINES[name](**options)
    except TypeError as exc:
        raise KneuronError(f"bad options for baseline {name!r}: {exc}") from None
