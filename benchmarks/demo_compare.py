"""Compare the suppression tables of two warehouses made by ``kneuron demo`` (e.g. before and after a change):
captions text for text, stored neuron sets unit for unit, scores within a tolerance. Prints one line per table
and exits 1 when they differ.

    python benchmarks/demo_compare.py OLD_WAREHOUSE NEW_WAREHOUSE [--tolerance 1e-6]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb


def _rows(con: duckdb.DuckDBPyConnection, root: Path, table: str, columns: str, methods: str = "") -> list[tuple]:
    """``columns`` of ``table``; with ``methods`` (a warehouse) only the rows whose method (and eval id) that
    warehouse's evaluations hold, so evaluations added to the new warehouse later are left out."""
    files = (root / table).as_posix() + "/**/*.parquet"
    where = ""
    if methods:
        captions = methods + "/captions/**/*.parquet"
        keep = "eval_id, method" if "eval_id" in columns else "method"
        where = (f"WHERE ({keep}) IN (SELECT DISTINCT {keep} FROM read_parquet('{captions}', "
                 "hive_partitioning = true))")
    return con.sql(f"SELECT {columns} FROM read_parquet('{files}', hive_partitioning = true) {where} "
                   "ORDER BY ALL").fetchall()


def compare(old: Path, new: Path, tolerance: float) -> list[str]:
    """Lines saying what differs (empty: the tables are the same)."""
    con = duckdb.connect()
    caption_cols = 'eval_id, method, concept, "group", image_id, condition, text'
    set_cols = "concept, method, layer, unit"
    score_cols = 'eval_id, method, concept, "group", image_id, metric, reference, value'
    problems = []
    only = old.as_posix()
    a, b = _rows(con, old, "captions", caption_cols), _rows(con, new, "captions", caption_cols, only)
    print(f"captions: {len(a)} vs {len(b)} rows; equal: {a == b}")
    if a != b:
        problems.append("captions differ")
    a, b = _rows(con, old, "neuron_sets", set_cols), _rows(con, new, "neuron_sets", set_cols, only)
    print(f"neuron_sets: {len(a)} vs {len(b)} rows; equal: {a == b}")
    if a != b:
        problems.append("neuron sets differ")
    sa = {r[:-1]: r[-1] for r in _rows(con, old, "scores", score_cols)}
    sb = {r[:-1]: r[-1] for r in _rows(con, new, "scores", score_cols, only)}
    worst = max((abs((sa[k] or 0.0) - (sb[k] or 0.0)) for k in sa.keys() & sb.keys()), default=0.0)
    print(f"scores: {len(sa)} vs {len(sb)} rows; same keys: {sa.keys() == sb.keys()}; max |difference| {worst:.3g}")
    if sa.keys() != sb.keys() or worst > tolerance:
        problems.append(f"scores differ (max {worst:.3g} > {tolerance:g})" if worst > tolerance
                        else "score keys differ")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    problems = compare(args.old, args.new, args.tolerance)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
