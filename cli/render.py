"""Renderers shared by the commands: Arrow tables as DuckDB box drawing, CSV or JSON Lines text."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from typing import Any


def render_table(table: Any, max_rows: int) -> str:
    """``table`` (pyarrow) as DuckDB's box drawing, at most ``max_rows`` rows, fitted to the terminal."""
    import duckdb

    con = duckdb.connect()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        con.from_arrow(table).show(max_rows=max_rows, max_width=shutil.get_terminal_size((120, 24)).columns,
                                   null_value="NULL")
    con.close()
    return buffer.getvalue()


def _json_ready(value: Any) -> Any:
    """``value`` with non-finite floats (also inside lists and dicts) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def render_json(table: Any) -> str:
    """One JSON object per row (JSON Lines); timestamps as ISO text, NaN/inf as null."""
    lines = [json.dumps(_json_ready(row), default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v),
                        ensure_ascii=False)
             for row in table.to_pylist()]
    return "".join(line + "\n" for line in lines)


def render_csv(table: Any) -> str:
    """CSV with a header row; nested values (lists, structs) as DuckDB writes them as text, NULL as empty."""
    import duckdb

    con = duckdb.connect()
    relation = con.from_arrow(table)
    as_text = relation.project(", ".join(f'CAST("{name.replace(chr(34), chr(34) * 2)}" AS VARCHAR)'
                                         for name in table.column_names)) if table.num_columns else relation
    rows = as_text.fetchall() if table.num_columns else []
    con.close()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return buffer.getvalue()
