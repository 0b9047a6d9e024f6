"""A small document model for reports: sections of text, tables, figures, code and a headline, and how values
print.

    section = Section("selection", "Selection summary", [Text("..."), Table(["concept", "n"], [["dog", 4]])])

`kneuron.engine.reporting.render` turns a list of sections into HTML or Markdown. Nothing here reads or writes the
warehouse.
Numbers print with 3 significant digits everywhere (`fmt`), so a column never mixes precisions.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass
class Text:
    """A paragraph."""

    text: str


@dataclass
class Table:
    """Rows of cells under ``columns``; cells print with `fmt`. ``notes``: what a column means, by column name
    (the column header's tooltip, and listed under the table unless ``legend`` is given). ``legend``: lines shown
    under the table instead of the notes (e.g. one line for a family of columns). ``folded``: the table sits in
    a closed ``<details>`` whose summary is the caption."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    legend: list[str] | None = None
    folded: bool = False


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


@dataclass
class Headline:
    """The answer a document leads with: one sentence (``answer``), then facts as (label, value) pairs."""

    answer: str
    facts: list[tuple[str, str]] = field(default_factory=list)


Block = Text | Table | Figure | Code | Headline


@dataclass
class Section:
    """A titled part of a document; ``id`` is its HTML anchor. ``folded``: its blocks sit in a closed
    ``<details>`` (``summary`` is the line shown while closed)."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    folded: bool = False
    summary: str = ""


def figures(sections: list[Section]) -> list[Path]:
    """The paths of every figure of ``sections``, in document order."""
    return [block.path for section in sections for block in section.blocks if isinstance(block, Figure)]


def fmt(value: Any) -> str:
    """A cell value as text: floats with 3 significant digits (`number`), NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, trailing zeros kept (0.300, 1.00, 12.3, 0.0123), in plain
    notation from 1e-4 to 1e6 (whole numbers of more digits keep them: 1234); else scientific (1.23e-05).
    Magnitudes under 1e-12 (float noise of a mean of equal values) print as 0; NaN as an em dash; infinities as
    ``inf`` / ``-inf``."""
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) < 1e-12:  # zero, or the float noise of a mean of equal values
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if not -4 <= magnitude < 6:
        return f"{value:.{digits - 1}e}"
    decimals = max(0, digits - 1 - magnitude)
    text = f"{value:.{decimals}f}"
    if math.floor(math.log10(abs(float(text)))) > magnitude and decimals > 0:  # rounded up a decade: 0.9996
        text = f"{value:.{decimals - 1}f}"
    return "0" if float(text) == 0 else text


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
    """``text`` as a file-name-safe word (letters, digits, ``_.-``; no leading dot; at most 72 characters). When it
    would be empty or longer, or ``text`` has non-ASCII characters, 8 hex of its sha256 end it, so that distinct
    names (``猫``, ``犬``) stay distinct."""
    word = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    if word and len(word) <= 72 and text.isascii():
        return word
    return f"{word[:63]}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}".lstrip("-")
