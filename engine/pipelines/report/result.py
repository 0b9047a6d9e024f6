"""`Report`: what the report step wrote, returned by `build_report` and by ``kneuron.report`` (no imports beyond
the standard library, so the Python API can name it without loading the report's modules)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Report:
    """Where the report is (``out_dir``: ``html``, ``markdown``, ``summary_json``, ``figures``) and its headline
    numbers (``summary``, also written to ``summary.json``)."""

    out_dir: Path
    html: Path
    markdown: Path
    summary_json: Path
    figures: list[Path]
    summary: dict[str, Any]
