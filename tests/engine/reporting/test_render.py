"""`kneuron.engine.reporting.document` and `kneuron.engine.reporting.render`: the report's document model and its HTML /
Markdown, without a
warehouse."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from kneuron.engine.reporting.document import (
    Code,
    Figure,
    Headline,
    Section,
    Table,
    Text,
    figures,
    fmt,
    json_ready,
    slug,
)
from kneuron.engine.reporting.render import render_html, render_markdown


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
    assert [fmt(v) for v in (None, float("nan"), 0.123456, 3, "x")] == ["—", "—", "0.123", "3", "x"]
    assert [fmt(v) for v in (0.3, 1.0, 12.345, 1234.5, 0.0123, 0.9996, -0.5, 0.00004, 5e6, 0.0, math.inf)] == [
        "0.300", "1.00", "12.3", "1234", "0.0123", "1.00", "-0.500", "4.00e-05", "5.00e+06", "0", "inf"]
    assert fmt(datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc)) == "2025-01-02T03:04:05+00:00"
    assert json_ready({1: (math.inf, 0.5, None, True, Path("p"))}) == {"1": [None, 0.5, None, True, "p"]}
    assert slug("traffic light/it's") == "traffic-light-it-s" and len(slug("///")) == 8 and slug("///") != slug("..")


def test_html_is_escaped_and_self_contained(tmp_path) -> None:  # noqa: ANN001
    page = render_html("T & T", "sub <title>", sections(tmp_path))
    assert page.startswith("<!DOCTYPE html>") and page.count("<section id=") == 2
    assert "<h1>T &amp; T</h1><p>sub &lt;title&gt;</p>" in page
    assert '<nav><a href="#one">First &lt;part&gt;</a><a href="#two">Second</a></nav>' in page
    assert "<p>a &amp; b</p>" in page
    assert ("<table><caption>numbers</caption><thead><tr><th>x</th><th>y|z</th></tr></thead><tbody>"
            '<tr><td class="num">1.23</td><td>—</td></tr><tr><td class="num">—</td><td>p|q</td></tr></tbody></table>'
            ) in page
    assert '<img alt="a red square" src="data:image/png;base64,' in page
    assert "<details><summary>config_json</summary><pre>{&quot;a&quot;: &quot;&lt;b&gt;&quot;}</pre></details>" in page
    assert "<script" not in page and "http" not in page


def test_markdown(tmp_path) -> None:  # noqa: ANN001
    text = render_markdown("T", "sub", sections(tmp_path), tmp_path)
    assert text.startswith("# T\n\nsub\n\n## First &lt;part&gt;\n\na &amp; b\n\n*numbers*\n\n")  # no raw HTML
    assert "| x | y\\|z |\n|---|---|\n| 1.23 | — |\n| — | p\\|q |\n" in text
    assert "![a red square](figures/a.png)" in text
    assert '```json\n{"a": "<b>"}\n```' in text


def test_figures_in_document_order(tmp_path) -> None:  # noqa: ANN001
    assert figures(sections(tmp_path)) == [tmp_path / "figures" / "a.png"]


def test_headline_folded_sections_and_column_notes(tmp_path) -> None:  # noqa: ANN001
    parts = [Section("answer", "The answer", [Headline("x wins <b>", [("model", "m & n"), ("run", "r")])]),
             Section("t", "Table", [Table(["a", "b"], [[0.5, "0.25 / 0.75"], ["x", True]], notes={"b": "what b is"})]),
             Section("cfg", "Configuration", [Text("inside")], folded=True, summary="show it")]
    page = render_html("T", "s", parts)
    assert ('<div class="headline"><p class="answer">x wins &lt;b&gt;</p><dl><dt>model</dt><dd>m &amp; n</dd>'
            "<dt>run</dt><dd>r</dd></dl></div>") in page
    assert '<th>a</th><th title="what b is">b</th>' in page and '<ul class="notes"><li><b>b</b>: what b is</li>' in page
    assert '<td class="num">0.500</td><td class="num">0.25 / 0.75</td>' in page and "<td>True</td>" in page
    assert "<h2>Configuration</h2>\n<details><summary>show it</summary><p>inside</p></details>" in page
    assert '<meta name="viewport"' in page and "@media (max-width: 700px)" in page
    text = render_markdown("T", "s", parts, tmp_path)
    assert "> **x wins &lt;b&gt;**\n>\n> - model: m &amp; n\n> - run: r\n" in text
    assert "- **b**: what b is" in text and "<details><summary>show it</summary>\n\ninside\n\n</details>" in text


def test_numeric_columns_legends_and_folded_tables(tmp_path) -> None:  # noqa: ANN001
    table = Table(["name", "n", "x"], [["a", 3, None], ["b", None, "0.5 / 0.25"]], caption="long list",
                  notes={"n": "count", "x": "ratio"}, legend=["n and x: one line for both"], folded=True)
    page = render_html("T", "s", [Section("s", "S", [table])])
    assert ('<tr><td>a</td><td class="num">3</td><td class="num">—</td></tr>'
            '<tr><td>b</td><td class="num">—</td><td class="num">0.5 / 0.25</td></tr>') in page
    assert '<details><summary>long list</summary><div class="table"><table><thead>' in page  # caption as summary
    assert '<ul class="notes"><li>n and x: one line for both</li></ul></details>' in page
    assert '<th title="count">n</th><th title="ratio">x</th>' in page
    text = render_markdown("T", "s", [Section("s", "S", [table])], tmp_path)
    assert "*long list*" in text and "- n and x: one line for both" in text and "**n**" not in text
    assert fmt(2.6e-16) == "0" and fmt(-3e-13) == "0" and fmt(2e-9) == "2.00e-09"
