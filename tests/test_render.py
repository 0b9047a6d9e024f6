"""`engine.document` and `engine.render`: the report's document model and its HTML / Markdown, without a
warehouse."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from engine.document import Code, Figure, Section, Table, Text, figures, fmt, json_ready, slug
from engine.render import render_html, render_markdown


def sections(tmp_path: Path) -> list[Section]:
    png = tmp_path / "figures" / "a.png"
    png.parent.mkdir()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(png)
    return [
        Section("one", "First <part>", [Text("a & b"), Table(["x", "y|z"], [[1.23456, None], [float("nan"), "p|q"]],
                                                              caption="numbers")]),
        Section("two", "Second", [Figure(png, "a red square"), Code("config_json", '{"a": "<b>"}')]),
    ]


def test_fmt_and_json_ready() -> None:
    assert [fmt(v) for v in (None, float("nan"), 0.123456, 3, "x")] == ["—", "—", "0.1235", "3", "x"]
    assert fmt(datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc)) == "2025-01-02T03:04:05+00:00"
    assert json_ready({1: (math.inf, 0.5, None, True, Path("p"))}) == {"1": [None, 0.5, None, True, "p"]}
    assert slug("traffic light/it's") == "traffic-light-it-s" and slug("///") == "x"


def test_html_is_escaped_and_self_contained(tmp_path) -> None:  # noqa: ANN001
    page = render_html("T & T", "sub <title>", sections(tmp_path))
    assert page.startswith("<!DOCTYPE html>") and page.count("<section id=") == 2
    assert "<h1>T &amp; T</h1><p>sub &lt;title&gt;</p>" in page
    assert '<nav><a href="#one">First &lt;part&gt;</a><a href="#two">Second</a></nav>' in page
    assert "<p>a &amp; b</p>" in page
    assert ("<table><caption>numbers</caption><thead><tr><th>x</th><th>y|z</th></tr></thead><tbody>"
            "<tr><td>1.235</td><td>—</td></tr><tr><td>—</td><td>p|q</td></tr></tbody></table>") in page
    assert '<img alt="a red square" src="data:image/png;base64,' in page
    assert "<details><summary>config_json</summary><pre>{&quot;a&quot;: &quot;&lt;b&gt;&quot;}</pre></details>" in page
    assert "<script" not in page and "http" not in page


def test_markdown(tmp_path) -> None:  # noqa: ANN001
    text = render_markdown("T", "sub", sections(tmp_path), tmp_path)
    assert text.startswith("# T\n\nsub\n\n## First <part>\n\na & b\n\n*numbers*\n\n")
    assert "| x | y\\|z |\n|---|---|\n| 1.235 | — |\n| — | p\\|q |\n" in text
    assert "![a red square](figures/a.png)" in text
    assert '```json\n{"a": "<b>"}\n```' in text


def test_figures_in_document_order(tmp_path) -> None:  # noqa: ANN001
    assert figures(sections(tmp_path)) == [tmp_path / "figures" / "a.png"]
