"""The persisted neuron warehouse: versioned Parquet tables, atomic batches, one writer, DuckDB views.

It knows nothing about models: writers hand in pyarrow tables or dicts of numpy arrays, readers get Arrow
tables or a DuckDB connection. This package face is what the rest of kneuron uses (not the submodules):

- `open_warehouse` (a directory or a URI), `Warehouse` / `Batch`: open, write atomic batches,
  read; `Warehouse.check_run_files` before resuming;
- `connect` / `table_paths`: DuckDB views over the committed files; `check_read_only_sql` for user SQL;
- `verify_warehouse` / `repair`: check every committed file against its record, remove failing batches;
- `compact_warehouse`: merge each partition's small files into large ones in one atomic step
  (`kneuron.warehouse.compact.compact`);
- `rollup_rows`: the ``neuron_rollup`` rows (per-neuron sums) of ``neuron_stats`` rows (`kneuron.warehouse.rollup`);
- `TABLES`, `conform`, `valid_run_id`: the schema (see `kneuron.warehouse.schema`, files in `kneuron.warehouse.layout`).
"""
from kneuron.warehouse.compact import CompactResult
from kneuron.warehouse.compact import compact as compact_warehouse
from kneuron.warehouse.connect import connect, table_paths
from kneuron.warehouse.manifest import BatchRecord, FileRecord
from kneuron.warehouse.opening import open_warehouse
from kneuron.warehouse.readonly import check_read_only_sql
from kneuron.warehouse.rollup import rollup_rows
from kneuron.warehouse.schema import SCHEMA_VERSION, TABLES, TableSpec, conform, valid_run_id
from kneuron.warehouse.store import Batch, Warehouse, default_warehouse_path
from kneuron.warehouse.verify import Problem, RepairResult, TableSummary, VerifyReport, repair, verify_warehouse

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "Batch",
    "BatchRecord",
    "CompactResult",
    "FileRecord",
    "Problem",
    "RepairResult",
    "TableSpec",
    "TableSummary",
    "VerifyReport",
    "Warehouse",
    "check_read_only_sql",
    "compact_warehouse",
    "conform",
    "connect",
    "default_warehouse_path",
    "open_warehouse",
    "repair",
    "rollup_rows",
    "table_paths",
    "valid_run_id",
    "verify_warehouse",
]
