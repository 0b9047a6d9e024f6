"""kneuron from Python: the four steps of the method and the warehouse, one call each.

    import kneuron

    wh = kneuron.open_warehouse("kneuron-warehouse")
    run = kneuron.ingest(wh, concepts=["circle"], images_per_concept=4)
    sets = kneuron.select(wh, run=run.run_id)
    ev = kneuron.suppress(wh, run=run.run_id, methods=["two_stage", "random"])
    kneuron.report(wh, out="kneuron-report", with_model=False)
    wh.sql("SELECT concept, count(*) AS n FROM samples GROUP BY ALL").df()

Names are imported on first use (module ``__getattr__``), so ``import kneuron`` loads neither torch nor DuckDB.
Every step logs through `logging` (module loggers under ``kneuron``) and
returns an object with the ids it made and its tables (pyarrow); nothing is printed.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Warehouse": "kneuron.api_warehouse",
    "open_warehouse": "kneuron.api_warehouse",
    "IngestRun": "kneuron.api_steps",
    "Selection": "kneuron.api_steps",
    "Report": "kneuron.api_steps",
    "ingest": "kneuron.api_steps",
    "select": "kneuron.api_steps",
    "suppress": "kneuron.api_steps",
    "report": "kneuron.api_steps",
    "load_model": "kneuron.api_model",
    "caption": "kneuron.api_model",
    "resolve_model": "kneuron.api_model",
    "KneuronError": "kneuron.engine.errors",
}

__all__ = ["IngestRun", "KneuronError", "Report", "Selection", "Warehouse", "caption", "ingest", "load_model",
           "open_warehouse", "report", "resolve_model", "select", "suppress"]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from kneuron.api_model import caption, load_model, resolve_model
    from kneuron.api_steps import IngestRun, Report, Selection, ingest, report, select, suppress
    from kneuron.api_warehouse import Warehouse, open_warehouse
    from kneuron.engine.errors import KneuronError


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and cache the name in this module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kneuron' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
