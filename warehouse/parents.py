"""Parent rows stored twice: copies of the ``runs``, ``evals`` and ``neuron_sets`` rows in the records that need them.

A *parent table* has a one-column key that other tables name (``runs.run_id``, ``evals.eval_id``,
``neuron_sets.set_id``; derived from the schema, so a new table with such a column is covered). Every commit
record carries JSON copies of the parent rows its own rows name (`BatchRecord.parents`), so when the batch
holding a parent row is damaged and removed, `repair` re-creates the row from a copy instead of removing every
batch that depends on it.

    refs = references("scores", rows)              # {"runs": {"r1"}, "evals": {"e1"}, "neuron_sets": {...}}
    rows_json = encode_rows("runs", rows)          # JSON-safe dicts (timestamps as ISO text)
    table = decode_rows("runs", rows_json)         # a pyarrow table of the runs schema
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kneuron.engine.errors import KneuronError
from kneuron.warehouse.schema import TABLES, spec_of

_TS = "__timestamp__"


def _parent_tables() -> dict[str, str]:
    """parent table -> its key column: single-column keys that some other table also has as a column."""
    found = {}
    for name, spec in TABLES.items():
        if len(spec.key) != 1:
            continue
        column = spec.key[0]
        if any(other != name and column in TABLES[other].schema.names for other in TABLES):
            found[name] = column
    return found


#: parent table -> key column (``{"runs": "run_id", "neuron_sets": "set_id", "evals": "eval_id"}``)
PARENTS: dict[str, str] = _parent_tables()


def references(table: str, rows: pa.Table) -> dict[str, set[Any]]:
    """The parent keys that ``rows`` of ``table`` name (non-null values of each parent's key column)."""
    found: dict[str, set[Any]] = {}
    for parent, column in PARENTS.items():
        if parent == table or column not in rows.column_names:
            continue
        values = {value for value in pc.unique(rows.column(column)).to_pylist() if value is not None}
        if values:
            found[parent] = values
    return found


def encode_rows(table: str, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (dicts of ``table``'s columns) as JSON-safe dicts: datetimes become ``{"__timestamp__": iso}``."""
    return [{key: ({_TS: value.isoformat()} if isinstance(value, datetime) else value) for key, value in row.items()}
            for row in rows]


def decode_rows(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """JSON copies made by `encode_rows` as a pyarrow table of ``table``'s schema."""
    spec = spec_of(table)
    plain = [{key: (datetime.fromisoformat(value[_TS]) if isinstance(value, dict) and _TS in value else value)
              for key, value in row.items()} for row in rows]
    return pa.Table.from_pylist([{name: row.get(name) for name in spec.schema.names} for row in plain],
                                schema=spec.schema)


def key_of(table: str, row: dict[str, Any]) -> Any:
    """The key value of a parent row."""
    return row[PARENTS[table]]


def copies_in(records: Iterable[Any]) -> dict[str, dict[Any, list[dict[str, Any]]]]:
    """parent table -> key -> its rows (JSON copies) found in ``records``' ``parents`` (the first copy wins)."""
    found: dict[str, dict[Any, list[dict[str, Any]]]] = {parent: {} for parent in PARENTS}
    for record in records:
        add_copies(found, record)
    return found


def add_copies(found: dict[str, dict[Any, list[dict[str, Any]]]], record: Any) -> None:
    """Add the parent-row copies of one commit record to ``found`` (`copies_in`'s mapping; first copy wins)."""
    for parent, rows in record.parents.items():
        if parent not in PARENTS:
            continue
        grouped: dict[Any, list[dict[str, Any]]] = {}
        for row in rows:
            grouped.setdefault(row.get(PARENTS[parent]), []).append(row)
        for key, group in grouped.items():
            found[parent].setdefault(key, group)

Copies = dict[str, dict[Any, list[dict[str, Any]]]]


def add_read_rows(cache: Copies, table: str, files: Iterable[tuple[str, Any]],
                  read: Callable[[str, Any], pa.Table]) -> None:
    """Add to ``cache`` the rows of parent ``table`` read from its committed ``files`` ((batch id, FileRecord)
    pairs) with ``read``; a file that does not read (`KneuronError`) is skipped."""
    for batch_id, entry in files:
        try:
            rows = read(batch_id, entry).to_pylist()
        except KneuronError:
            continue
        grouped: dict[Any, list[dict[str, Any]]] = {}
        for row in rows:
            grouped.setdefault(key_of(table, row), []).append(row)
        for key, group in grouped.items():
            cache[table].setdefault(key, encode_rows(table, group))


def pick(cache: Copies, table: str, keys: Iterable[Any]) -> list[dict[str, Any]]:
    """The cached rows of parent ``table`` with ``keys`` (keys not cached are left out), by key."""
    found = cache[table]
    return [row for key in sorted(set(keys) & set(found), key=str) for row in found[key]]
