"""The optional fragility check of a suppression evaluation (``EvalConfig.fragility_images = N``): is a set's
effect just the effect of hitting one unit that changes captions whatever the concept?

On N identification images (a seeded choice from the evaluated concepts' identification images; never an
evaluation image), every unit of every evaluated set is zeroed alone and the share of changed captions is
measured (`kneuron.engine.signals.fragility.caption_change_rate`); a unit that changes at least half of them is
*fragile*.
Per method label the table says how many fragile units its sets hold (mean over concepts) and in how many
concepts' sets there is one. The check also compares the massive units of the stored-signal rule
(``queries/massive_units.sql``) with the exact rule on these images
(`kneuron.engine.signals.fragility.activation_magnitude`).
Results are returned (and printed by ``kneuron suppress``), not stored: they depend only on the model, the images
and the units.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from kneuron.engine.baselines.base import concept_rng
from kneuron.engine.eval.budget import split_label
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.signals.fragility import (
    FRAGILE_SHARE,
    activation_magnitude,
    caption_change_rate,
    fragile_units,
    massive_mask,
)

FRAGILITY_SCHEMA = pa.schema([
    ("method", pa.string()),
    ("budget", pa.int64()),
    ("n_sets", pa.int64()),
    ("fragile_per_set", pa.float64()),
    ("sets_with_fragile", pa.int64()),
])


def check_images(ident_images: Mapping[str, Sequence[int]], concepts: Sequence[str], n: int, seed: int) -> list[int]:
    """``n`` identification image ids of ``concepts`` (seeded choice from their union; ascending)."""
    pool = sorted({int(i) for c in concepts for i in ident_images.get(c, ())})
    pick = concept_rng(seed, "*", "fragility").permutation(len(pool))[:n]
    return sorted(pool[i] for i in pick)


def fragility_check(adapter: VLMAdapter, dataset: Any, image_ids: Sequence[int],
                    sets: Mapping[tuple[str, str], Sequence[tuple[int, int]]], massive: Sequence[tuple[int, int]],
                    k: float, batch_size: int, log: Callable[[str], None]) -> tuple[pa.Table, list[str]]:
    """(`FRAGILITY_SCHEMA` table per method label, notes) for the sets ``(concept, label) -> neurons``."""
    images = [dataset.load_image(i) for i in image_ids]
    units = sorted({(int(a), int(b)) for neurons in sets.values() for a, b in neurons})
    log(f"fragility: zeroing each of {len(units)} unit(s) alone on {len(images)} identification image(s)")
    rates = caption_change_rate(adapter, images, units, batch_size=batch_size)
    fragile = set(fragile_units(rates))
    rows: dict[str, dict[str, Any]] = {}
    for (_, name), neurons in sets.items():
        hits = len(fragile & {(int(a), int(b)) for a, b in neurons})
        entry = rows.setdefault(name, {"n_sets": 0, "hits": 0, "with": 0})
        entry["n_sets"] += 1
        entry["hits"] += hits
        entry["with"] += hits > 0
    table = []
    order = list(dict.fromkeys(split_label(name)[0] for name in rows))  # methods as the evaluation lists them
    for name, entry in sorted(rows.items(), key=lambda item: (order.index(split_label(item[0])[0]),
                                                               split_label(item[0])[1] or 0)):
        method, budget = split_label(name)
        table.append({"method": method, "budget": budget, "n_sets": entry["n_sets"],
                      "fragile_per_set": entry["hits"] / entry["n_sets"], "sets_with_fragile": entry["with"]})
    exact = massive_mask(activation_magnitude(adapter, images, batch_size=batch_size), k)
    by_model = sorted((int(a), int(b)) for a, b in zip(*np.nonzero(exact), strict=True))
    notes = [f"fragility: {len(fragile)} of {len(units)} unit(s) of the evaluated sets change >= "
             f"{FRAGILE_SHARE:.0%} of {len(images)} identification caption(s) when zeroed alone"
             + (f": {', '.join(f'{a}:{b}' for a, b in sorted(fragile))}" if fragile else ""),
             f"massive units (k={k:g}): stored-signal rule {_pairs(massive)}; exact mean |O| on these images "
             f"{_pairs(by_model)}"]
    return pa.Table.from_pylist(table, schema=FRAGILITY_SCHEMA), notes


def _pairs(pairs: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{a}:{b}" for a, b in pairs) if pairs else "none"


__all__ = ["FRAGILITY_SCHEMA", "check_images", "fragility_check"]
