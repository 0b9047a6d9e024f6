"""The run reader: one run of a warehouse, and what the report and the neuron CLIs load from it.

    with RunReader("kneuron-warehouse") as run:             # the latest run
        concept, neurons, what = run.chosen_set("dog", "two_stage", None)   # dog's current two_stage set
        adapter = run.load_model()                            # the model that recorded the run

``run.row`` is the run's ``runs`` row and ``run.config`` its parsed ``config_json``. Which set of a (concept,
method) is current is decided in SQL, by the ``current_sets`` view (`kneuron.engine.pipelines.sets.current_set_ids`):
the latest chosen by ``kneuron select``, else the latest stored.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa

from kneuron import queries
from kneuron.engine.baselines import ScoredNeuron
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.evidence import Evidence
from kneuron.engine.eval.metrics import METRICS
from kneuron.engine.eval.summary import ImageOutcome, outcomes_from_rows, summarize
from kneuron.engine.pipelines.sets import StoredSet, current_set_ids, stored_sets


def strongest_first(neurons: list[ScoredNeuron]) -> list[ScoredNeuron]:
    """``neurons`` by score descending (no score last), then layer, then unit."""
    return sorted(neurons, key=lambda n: (n[2] is None, -(n[2] or 0.0), n[0], n[1]))



class ChosenStoredSet(NamedTuple):
    """A stored set picked by id, or as a concept's current set (`RunReader.chosen_stored_set`)."""

    set_id: str
    stored: StoredSet  # neurons strongest first
    concept: str | None  # the concept asked for, else the set's own
    description: str  # one line for the user


class ChosenSet(NamedTuple):
    """The neurons of a picked set (`RunReader.chosen_set`): the same fields, the set's members only."""

    concept: str | None
    neurons: list[ScoredNeuron]  # strongest first
    description: str

@dataclass(frozen=True)
class StoredEvaluation:
    """One stored evaluation summarised as ``kneuron suppress`` does: its outcomes, the metrics summarised and
    the `kneuron.engine.eval.summary.summarize` table."""
    outcomes: list[ImageOutcome]
    metrics: list[str]
    summary: pa.Table


def load_evaluation(con: duckdb.DuckDBPyConnection, eval_id: str, dataset: Any, sets: Mapping[str, StoredSet],
                    metrics: Sequence[str] | None = None) -> StoredEvaluation:
    """The captions and scores of evaluation ``eval_id``, joined (`outcomes_from_rows`) and summarised.

    dataset: gives the concepts annotated in each image (other-object retention; None: no image has any);
    sets: set_id -> stored set (its neuron count; missing sets count 0 neurons); metrics: those summarised
    (None: the metrics the evaluation scored, in `METRICS` order, then any others sorted).
    """
    captions = queries.run(con, "suppress_eval_captions", {"eval_id": eval_id}).to_pylist()
    scores = queries.run(con, "suppress_eval_scores", {"eval_id": eval_id}).to_pylist()
    concepts_in = dataset.concepts_in if dataset is not None else (lambda image_id: ())
    outcomes = outcomes_from_rows(captions, scores, concepts_in, sets)
    if metrics is None:
        present = {row["metric"] for row in scores}
        metrics = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    return StoredEvaluation(outcomes, list(metrics), summarize(outcomes, metrics=metrics))


def stored_evidence(con: duckdb.DuckDBPyConnection, eval_id: str) -> Evidence | None:
    """The stored ``evidence_*`` rows of ``eval_id`` (written by ``kneuron suppress``); None when none is stored."""
    if not queries.run(con, "evidence_stored", {"eval_id": eval_id}).column("n_intervals")[0].as_py():
        return None
    return Evidence(*(queries.run(con, f"evidence_{name}", {"eval_id": eval_id})
                      for name in ("intervals", "paired", "gaps")))


class RunReader:
    """One run of a warehouse (the latest when ``run_id`` is None), read through a read-only connection."""

    def __init__(self, root: str | Path | None, run_id: str | None = None) -> None:
        self.con = queries.connect(root, read_only=True)
        self.root = root
        try:
            if run_id is None:
                latest = queries.run(self.con, "latest_run").to_pylist()
                if not latest:
                    from kneuron import warehouse

                    raise KneuronError(f"warehouse {root or warehouse.default_warehouse_path()} has no runs; "
                                       "run `kneuron ingest` first")
                run_id = str(latest[0]["run_id"])
            rows = queries.run(self.con, "report_run", {"run_id": run_id}).to_pylist()
            if not rows:
                known = sorted(r["run_id"] for r in queries.run(self.con, "list_runs", {"run_id": None}).to_pylist())
                raise KneuronError(f"unknown run {run_id!r}; runs in the warehouse: {', '.join(known) or 'none'}")
        except BaseException:
            self.con.close()
            raise
        self.run_id: str = run_id
        self.row: dict[str, Any] = rows[0]
        try:
            self.config: dict[str, Any] = json.loads(self.row.get("config_json") or "{}")
        except ValueError:
            self.config = {}
        self.notes: list[str] = []
        self._evaluations: dict[str, tuple[Any, StoredEvaluation]] = {}

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, name: str, **params: Any) -> Any:
        """The bundled query ``name`` with ``$run_id`` bound to this run (and ``params``)."""
        return queries.run(self.con, name, {"run_id": self.run_id, **params})

    def close(self) -> None:
        self.con.close()

    def evaluation(self, eval_id: str, dataset: Any) -> StoredEvaluation:
        """Evaluation ``eval_id`` of this run, summarised over all its metrics with the run's stored sets
        (`load_evaluation`); loaded once per (eval_id, dataset) for the reader's lifetime."""
        cached = self._evaluations.get(eval_id)
        if cached is None or cached[0] is not dataset:
            cached = (dataset, load_evaluation(self.con, eval_id, dataset, stored_sets(self.con, self.run_id)))
            self._evaluations[eval_id] = cached
        return cached[1]

    # ------------------------------------------------------------------ model, data, inpainting
    @property
    def model_name(self) -> str:
        return str(self.config.get("config", {}).get("model") or self.row["model_name"])

    def load_model(self, model: str | None = None, device: str = "auto") -> Any:
        """The run's model (or ``model``) on ``device`` (``auto``: CUDA when available); a note is kept when its
        fingerprint differs from the run's."""
        from kneuron.engine.models import load_model, resolve_device
        from kneuron.engine.models.fingerprint import model_fingerprint

        device = resolve_device(device)
        adapter = load_model(model or self.model_name, device=device,
                             dtype=self.row.get("dtype") if model is None and device != "cpu" else None)
        if model_fingerprint(adapter) != self.row.get("model_hash"):
            self.notes.append(f"the loaded model {model or self.model_name!r} is not the one that recorded the "
                              f"run (fingerprint differs from {self.row.get('model_hash')})")
        return adapter

    def dataset(self, data_root: str | None = None, split: str | None = None) -> Any:
        """The run's COCO split (``identity.dataset`` / ``identity.split`` of its config), or the override."""
        from kneuron.engine.data.coco import CocoDataset

        identity = self.config.get("identity", {})
        root = data_root or identity.get("dataset") or self.config.get("config", {}).get("coco_root")
        split = split or identity.get("split") or self.config.get("config", {}).get("split")
        if not root or not split:
            raise KneuronError(f"run {self.run_id} does not record its dataset; give --data-root and --split")
        return CocoDataset(root, split)

    def inpainter(self, device: str = "cpu") -> tuple[Any, float]:
        """The run's inpainter and dilation margin (px), rebuilt from its config."""
        from kneuron.engine.inpaint import get_inpainter

        config = self.config.get("config", {})
        name = config.get("inpainter", "telea")
        margin = float(config.get("margin_px", 0.0))
        if name in ("telea", "ns"):
            return get_inpainter(name, radius=config.get("inpaint_radius", 5.0)), margin
        return get_inpainter(name, model=config.get("sd_model"), seed=config.get("sd_seed", 0),
                             steps=config.get("sd_steps", 25), device=device), margin

    @staticmethod
    def pair(dataset: Any, concept: str, image_id: int, inpainter: Any, margin: float) -> tuple[Any, Any]:
        """(original, inpainted) PIL images, made the way ingest makes them."""
        import numpy as np
        from PIL import Image

        from kneuron.engine.inpaint import removal_mask

        original = dataset.load_image(image_id)
        mask = removal_mask([dataset.concept_mask(image_id, concept)], (original.height, original.width), margin)
        return original, Image.fromarray(inpainter.inpaint(np.asarray(original), mask))

    def images(self) -> dict[str, list[int]]:
        """concept -> its evaluation image ids (identification images only for a concept without any)."""
        by_split: dict[str, dict[str, list[int]]] = {}
        for row in self.query("report_images").to_pylist():
            by_split.setdefault(row["concept"], {}).setdefault(row["split"], []).append(int(row["image_id"]))
        return {concept: splits.get("eval") or splits.get("ident", []) for concept, splits in by_split.items()}

    # ------------------------------------------------------------------ neuron sets
    def current_set_ids(self, method: str | None = None) -> dict[tuple[str, str], str]:
        """(concept, method) -> set id of the run's current sets (of ``method``, or of every method)."""
        return current_set_ids(self.con, self.run_id, method)

    def sets(self, set_ids: list[str]) -> dict[str, StoredSet]:
        """set id -> `StoredSet` of the given sets of this run, neurons strongest first; `KneuronError` naming
        any id the run does not hold."""
        found = stored_sets(self.con, self.run_id, set_ids) if set_ids else {}
        missing = [set_id for set_id in set_ids if set_id not in found]
        if missing:
            raise KneuronError(f"no neuron set {', '.join(repr(s) for s in missing)} in run {self.run_id}")
        for entry in found.values():
            entry.neurons = strongest_first(entry.neurons)
        return found

    def current_sets(self, method: str | None = None) -> dict[tuple[str, str], StoredSet]:
        """(concept, method) -> the current `StoredSet` (neurons strongest first) of every (concept, method)."""
        ids = self.current_set_ids(method)
        found = self.sets(sorted(set(ids.values())))
        return {key: found[set_id] for key, set_id in ids.items()}

    def chosen_set(self, concept: str | None, method: str, set_id: str | None) -> ChosenSet:
        """(concept, neurons strongest first, description) of the set ``set_id``, else of ``concept``'s current
        ``method`` set. The concept is the set's own unless ``concept`` names another one."""
        chosen = self.chosen_stored_set(concept, method, set_id)
        return ChosenSet(chosen.concept, chosen.stored.neurons, chosen.description)

    def chosen_stored_set(self, concept: str | None, method: str, set_id: str | None) -> ChosenStoredSet:
        """(set id, `StoredSet` with neurons strongest first, concept, description) of the set `chosen_set`
        picks: ``set_id``, else ``concept``'s current ``method`` set."""
        if set_id:
            chosen = self.sets([set_id])[set_id]
            return ChosenStoredSet(set_id, chosen, concept or chosen.concept,
                                   f"set {set_id} ({chosen.concept}, {chosen.method}, {len(chosen.neurons)} neurons)")
        current = self.current_set_ids(method).get((concept, method)) if concept else None
        if current is None:
            raise KneuronError(f"no {method} neuron set for concept {concept!r} in run {self.run_id}")
        chosen = self.sets([current])[current]
        return ChosenStoredSet(current, chosen, concept,
                               f"{concept} ({method}, {len(chosen.neurons)} neurons, set {current})")
