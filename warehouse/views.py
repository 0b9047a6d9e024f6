"""The ``CREATE VIEW`` statement of a warehouse table over its committed Parquet files (or an Arrow relation).

Shared by `kneuron.warehouse.connect` (local files) and `kneuron.warehouse.remote` (datasets read from a URI).
"""
from __future__ import annotations

from kneuron.warehouse.schema import ADDED_COLUMNS, VIEW_EXTRA_COLUMNS, TableSpec, duckdb_type


def identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(spec: TableSpec, files: list[str], name: str | None = None, relation: str | None = None) -> str:
    """``CREATE VIEW`` of ``spec`` over ``files`` (absolute paths), or over no rows when there are none.

    The files are read with hive partitioning (so DuckDB prunes files by run/concept) without type guessing
    (partition values stay VARCHAR); the stored columns hold the same values, so the view is exact either way.
    A table with ``spec.supersedable`` shows one row per key (see `TableSpec`); ``files`` are in commit order,
    and within a file (a compacted one holds the rows of many batches, `kneuron.warehouse.compact`) later rows are
    later. name: the view's name (default: the table's). relation: read this relation (a registered Arrow
    dataset, `kneuron.warehouse.remote`; a supersedable table's carries ``_kneuron_file`` and ``file_row_number``)
    instead of ``files``.
    """
    columns = ", ".join(identifier(name) for name in spec.columns)
    extras = "".join(
        f", CAST({expression} AS {type_}) AS {identifier(name)}"
        for name, (expression, type_) in VIEW_EXTRA_COLUMNS.get(spec.name, {}).items()
    )
    if relation is not None:
        source = identifier(relation)
        if spec.supersedable is not None:
            column, value = spec.supersedable
            source = (f"(SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY "
                      f"{', '.join(identifier(k) for k in spec.key)} ORDER BY ({identifier(column)} = "
                      f"{literal(value)}), _kneuron_file DESC, file_row_number DESC) = 1)")
    elif files:
        file_list = "[" + ", ".join(literal(path) for path in files) + "]"
        if spec.supersedable is not None:  # one row per key: a non-superseded one, else the latest file's
            column, value = spec.supersedable
            source = (
                f"(SELECT * FROM read_parquet({file_list}, hive_partitioning = true, hive_types_autocast = false, "
                f"filename = '_kneuron_file', file_row_number = true) QUALIFY row_number() OVER (PARTITION BY "
                f"{', '.join(identifier(k) for k in spec.key)} ORDER BY ({identifier(column)} = {literal(value)}), "
                f"list_position({file_list}, _kneuron_file) DESC, file_row_number DESC) = 1)"
            )
        elif ADDED_COLUMNS.get(spec.name):  # files from before a column was added lack it: null there
            typed_nulls = ", ".join(
                f"CAST(NULL AS {duckdb_type(f.type)}) AS {identifier(f.name)}" for f in spec.schema)
            source = (f"(SELECT {typed_nulls} WHERE false UNION ALL BY NAME SELECT * FROM read_parquet({file_list}, "
                      "hive_partitioning = true, hive_types_autocast = false, union_by_name = true))")
        else:
            source = f"read_parquet({file_list}, hive_partitioning = true, hive_types_autocast = false)"
    else:
        typed_nulls = ", ".join(
            f"CAST(NULL AS {duckdb_type(f.type)}) AS {identifier(f.name)}" for f in spec.schema
        )
        source = f"(SELECT {typed_nulls} WHERE false)"
    return f"CREATE OR REPLACE VIEW {identifier(name or spec.name)} AS SELECT {columns}{extras} FROM {source}"
