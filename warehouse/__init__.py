"""The persisted neuron warehouse: versioned Parquet tables, atomic batches, one writer, DuckDB views.

It knows nothing about models: writers hand in pyarrow tables or dicts of numpy arrays, readers get Arrow
tables or a DuckDB connection. See `warehouse.schema` for the tables and `warehouse.layout` for the files.
"""
from warehouse.connect import connect, table_paths
from warehouse.manifest import BatchRecord, FileRecord
from warehouse.schema import SCHEMA_VERSION, TABLES, TableSpec, conform
from warehouse.store import Batch, Warehouse, default_warehouse_path

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "Batch",
    "BatchRecord",
    "FileRecord",
    "TableSpec",
    "Warehouse",
    "conform",
    "connect",
    "default_warehouse_path",
    "table_paths",
]
