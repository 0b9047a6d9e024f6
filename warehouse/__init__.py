"""The persisted neuron warehouse: versioned Parquet tables, atomic batches, one writer, DuckDB views.

It knows nothing about models: writers hand in pyarrow tables or dicts of numpy arrays, readers get Arrow
tables or a DuckDB connection. This package face is what the rest of kneuron uses (not the submodules):

- `Warehouse` / `Batch`: open, write atomic batches, read; `Warehouse.check_run_files` before resuming;
- `connect` / `table_paths`: DuckDB views over the committed files; `check_read_only_sql` for user SQL;
- `verify_warehouse` / `repair`: check every committed file against its record, remove failing batches;
- `TABLES`, `conform`, `valid_run_id`: the schema (see `warehouse.schema`, files in `warehouse.layout`).
"""
from warehouse.connect import connect, table_paths
from warehouse.manifest import BatchRecord, FileRecord
from warehouse.readonly import check_read_only_sql
from warehouse.schema import SCHEMA_VERSION, TABLES, TableSpec, conform, valid_run_id
from warehouse.store import Batch, Warehouse, default_warehouse_path
from warehouse.verify import Problem, RepairResult, TableSummary, VerifyReport, repair, verify_warehouse

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "Batch",
    "BatchRecord",
    "FileRecord",
    "Problem",
    "RepairResult",
    "TableSpec",
    "TableSummary",
    "VerifyReport",
    "Warehouse",
    "check_read_only_sql",
    "conform",
    "connect",
    "default_warehouse_path",
    "repair",
    "table_paths",
    "valid_run_id",
    "verify_warehouse",
]
