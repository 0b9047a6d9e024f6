"""Warehouse tables in a total order without their creation times, so two runs' tables compare with ``equals``."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from kneuron import warehouse


def sorted_rows(rows: pa.Table, keys: list[str]) -> pa.Table:
    """``rows`` without ``created_at`` (when it has one), sorted ascending by ``keys``."""
    if "created_at" in rows.column_names:
        rows = rows.drop_columns(["created_at"])
    return rows.sort_by([(key, "ascending") for key in keys])


def sorted_tables(root: Path, keys: dict[str, list[str]]) -> dict[str, pa.Table]:
    """Each table named in ``keys`` (table -> sort keys) of the warehouse at ``root``, by `sorted_rows`."""
    store = warehouse.Warehouse.open(root)
    return {table: sorted_rows(store.read(table), table_keys) for table, table_keys in keys.items()}
