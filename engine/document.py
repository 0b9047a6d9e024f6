"""A small document model for reports: sections of text, tables, figures and code, and how values print.

    section = Section("selection", "Selection summary", [Text("..."), Table(["concept", "n"], [["dog", 4]])])

`engine.render` turns a list of sections into HTML or Markdown. Nothing here reads or writes the warehouse.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Union


@dataclass
class Text:
    """A paragraph."""

    text: str


@dataclass
class Table:
    """Rows of cells under ``columns``; cells print with `fmt`."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG file on disk (inlined into HTML, linked from Markdown) and its caption."""

    path: Path
    caption: str


@dataclass
class Code:
    """A folded block of preformatted text (e.g. a JSON config) under ``summary``."""

    summary: str
    text: str


Block = Union[Text, Table, Figure, Code]


@dataclass
class Section:
    """A titled part of a document; ``id`` is its HTML anchor."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


def figures(sections: list[Section]) -> list[Path]:
    """The paths of every figure of ``sections``, in document order."""
    return [block.path for section in sections for block in section.blocks if isinstance(block, Figure)]


def fmt(value: Any) -> str:
    """A cell value as text: floats with 4 significant digits, NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def json_ready(value: Any) -> Any:
    """``value`` with NaN/inf floats as None, tuples as lists and other non-JSON leaves as text."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def slug(text: str) -> str:
    """``text`` reduced to a file-name-safe word (letters, digits, ``_.-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"
