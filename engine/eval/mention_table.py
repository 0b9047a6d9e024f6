"""Mention outcomes per (caption, object): whether each stored caption names its concept and each other object
annotated in its image (`kneuron.engine.eval.mentions.mentions`), as rows of the warehouse ``mentions`` table. Pure."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kneuron.engine.eval.budget import split_label
from kneuron.engine.eval.mentions import mentions

COLUMNS = ("eval_id", "run_id", "set_id", "method", "budget", "concept", "group", "image_id", "condition",
           "object", "is_concept", "mentioned")


def mention_rows(captions: Sequence[Mapping[str, Any]], concepts_in: Callable[[int], Sequence[str]], eval_id: str,
                 run_id: str) -> dict[str, list[Any]]:
    """Column lists (`COLUMNS`) for the ``captions`` rows of one evaluation (the columns of
    ``queries/suppress_eval_captions.sql``): per caption one row for its concept (``is_concept``) and one per other
    object annotated in the image; ``budget``: the n of a ``method@n`` label, else None."""
    out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in captions:
        objects = [row["concept"]] + sorted(set(concepts_in(int(row["image_id"]))) - {row["concept"]})
        budget = split_label(row["method"])[1]
        for index, name in enumerate(objects):
            values = {"eval_id": eval_id, "run_id": run_id, "set_id": row["set_id"], "method": row["method"],
                      "budget": budget, "concept": row["concept"], "group": row["group"],
                      "image_id": int(row["image_id"]), "condition": row["condition"], "object": name,
                      "is_concept": index == 0, "mentioned": bool(mentions(row["text"], name))}
            for column, value in values.items():
                out[column].append(value)
    return out


__all__ = ["COLUMNS", "mention_rows"]
