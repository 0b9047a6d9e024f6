"""An edited model scored like a suppression: the method ``edited`` of `kneuron.engine.pipelines.suppress.pipeline`.

A folder written by ``kneuron edit`` holds the model with a neuron set erased (or scaled) in its weights and a
record of the edit (`kneuron.engine.interventions.edit.read_edit_record`). Its plain greedy captions are the method's
captions; the
reference stays the run's own model, so its stored unmodified captions are reused and every drop is measured
against the model the set was found in. The edit record (not the path alone) enters the evaluation's identity.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kneuron.engine.baselines import ScoredNeuron
from kneuron.engine.errors import KneuronError
from kneuron.engine.interventions.edit import read_edit_record
from kneuron.engine.models import load_model
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.sets import StoredSet
from kneuron.engine.signals.neurons import parse_neuron


@dataclass
class EditedModel:
    """The loaded edited model and what its record says was edited."""

    path: str
    adapter: VLMAdapter
    record: dict[str, Any]

    def identity(self) -> dict[str, Any]:
        """What enters the eval id: the folder and its edit record, less when and by which version it was written."""
        return {"path": self.path,
                "edit": {k: v for k, v in self.record.items() if k not in ("created_at", "kneuron_version")}}

    def neuron_set(self, run_id: str, sets: Mapping[str, StoredSet]) -> tuple[str | None, list[ScoredNeuron]]:
        """(the run's stored set the edit came from, or None; the edited neurons ``[(layer, unit, None)]``)."""
        neurons: list[ScoredNeuron] = []
        for text in self.record.get("neurons", []):
            layer, unit = parse_neuron(str(text))
            neurons.append((layer, unit, None))
        origin = self.record.get("set") or {}
        set_id = str(origin.get("set_id")) if origin.get("run_id") in (None, run_id) else None
        return (set_id if set_id in sets else None), neurons


def open_edited(path: str, reference: VLMAdapter, log: Callable[[str], None] | None = None) -> EditedModel:
    """Load ``path`` (a ``kneuron edit`` folder) on the reference model's device and dtype."""
    record = read_edit_record(path)
    if record is None:
        raise KneuronError(f"--edited-model {path}: not a folder written by kneuron edit (no kneuron_edit.json)")
    adapter = load_model(path, device=str(reference.device), dtype=reference.dtype, log=log)
    return EditedModel(path, adapter, record)
