"""Where the warehouse keeps things on disk and how a Parquet file of a table is encoded.

    <root>/warehouse.json                                   {"format": "kneuron-warehouse", "schema_version": 1}
    <root>/.writer.lock                                     flock of the single writer (holds its pid)
    <root>/_manifest/<batch_id>.json                        commit record of one batch (written last)
    <root>/<table>/run_id=<r>/concept=<c>/part-<batch_id>-<nnnn>.parquet

Partition values are percent-encoded (``traffic light`` -> ``traffic%20light``, ``/`` -> ``%2F``); DuckDB's
hive partitioning decodes them. The values are also stored as ordinary columns inside every file, so the files
are correct with or without hive partitioning. A file is first written as ``.part-...parquet.tmp`` (a name no
``*.parquet`` glob matches) and renamed when its batch commits.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from kneuron.warehouse.schema import TableSpec

MARKER_FILE = "warehouse.json"
LOCK_FILE = ".writer.lock"
MANIFEST_DIR = "_manifest"
DEFAULT_PATH = "./kneuron-warehouse"
ENV_VAR = "KNEURON_WAREHOUSE"

ZSTD_LEVEL = 3
ROW_GROUP_ROWS = 1 << 20

# Names of files the writer creates inside table directories (anything else there is left alone by GC).
DATA_FILE = re.compile(r"part-(?P<batch>[A-Za-z0-9_\-]+)-(?P<seq>\d{4,})\.parquet")
TEMP_FILE = re.compile(r"\.part-(?P<batch>[A-Za-z0-9_\-]+)-(?P<seq>\d{4,})\.parquet\.tmp")


def encode_partition_value(value: Any) -> str:
    """A partition value as it appears in a directory name (percent-encoded UTF-8, ``/`` and ``=`` included)."""
    return quote(str(value), safe="")


def partition_dir(spec: TableSpec, values: Mapping[str, Any]) -> str:
    """The directory (relative to the root, ``/``-separated) of the files of ``spec`` with these partition values."""
    parts = [spec.name] + [f"{key}={encode_partition_value(values[key])}" for key in spec.partition_by]
    return "/".join(parts)


def data_file_name(batch_id: str, seq: int) -> str:
    """The committed name of the ``seq``-th file of a batch."""
    return f"part-{batch_id}-{seq:04d}.parquet"


def temp_file_name(batch_id: str, seq: int) -> str:
    """The name the ``seq``-th file of a batch has until the batch commits."""
    return f".{data_file_name(batch_id, seq)}.tmp"


def manifest_path(root: Path, batch_id: str) -> Path:
    return root / MANIFEST_DIR / f"{batch_id}.json"


def parquet_options(spec: TableSpec) -> dict[str, Any]:
    """Keyword arguments of `pyarrow.parquet.ParquetWriter` for the files of ``spec``.

    zstd everywhere. Strings and int64 ids (run, concept, image: one or few values per file) are
    dictionary + RLE encoded, which makes them nearly free. Smaller integer ids (layer, unit, position, rank)
    are DELTA_BINARY_PACKED without a dictionary: sorted ``unit`` runs 0..d_ff-1 per layer, so its deltas
    are constant and cost a few bits per page. float16 values are PLAIN (a dictionary of random float16 values
    only costs time); DuckDB cannot read BYTE_STREAM_SPLIT float16, so it is not used for them. float64 (the
    rollup's exact sums of float16 values, whose low mantissa bytes are mostly zero) is BYTE_STREAM_SPLIT,
    which lays those zero bytes side by side for zstd: ~16% smaller than PLAIN.
    """
    dictionary: list[str] = []
    encodings: dict[str, str] = {}
    for f in spec.schema:
        if pa.types.is_string(f.type) or f.type == pa.int64():
            dictionary.append(f.name)
        elif pa.types.is_integer(f.type):
            encodings[f.name] = "DELTA_BINARY_PACKED"
        elif f.type == pa.float64():
            encodings[f.name] = "BYTE_STREAM_SPLIT"
    return {
        "compression": "zstd",
        "compression_level": ZSTD_LEVEL,
        "use_dictionary": dictionary,
        "column_encoding": encodings,
        "write_statistics": True,
    }
