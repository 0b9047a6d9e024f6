"""Render a list of `kneuron.engine.reporting.document.Section` as one self-contained HTML page or as Markdown.

HTML: inline CSS, every figure a base64 ``data:`` URI, no script and no external resource. A `Headline` block
is the boxed answer the page leads with; a folded section or table sits in a closed ``<details>``; table
columns with `Table.notes` get a tooltip and a legend under the table (or the table's own `Table.legend`);
numeric columns are right-aligned; wide tables scroll inside their own box and heatmap figures sit side by side
where they fit, so the page also reads on a narrow screen. Markdown: figures linked by their path
relative to the Markdown file's folder, the headline as a block quote.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kneuron.engine.reporting.document import Code, Figure, Headline, Section, Table, Text, fmt

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; margin-bottom: .2em; }
h1 + p { color: #555; margin-top: 0; overflow-wrap: anywhere; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
nav { font-size: 92%; display: flex; flex-wrap: wrap; gap: .3em 1.2em; }
nav a { white-space: nowrap; }
.headline { border: 1px solid #9bb7d4; background: #f3f8fd; border-radius: 6px; padding: .8em 1.2em;
            margin: 1em 0; }
.headline .answer { font-size: 115%; margin: .2em 0 .6em; }
.headline dl { display: grid; grid-template-columns: max-content 1fr; gap: .25em 1em; margin: 0; }
.headline dt { color: #555; }
.headline dd { margin: 0; overflow-wrap: anywhere; }
.table { overflow-x: auto; margin: .8em 0; }
table { border-collapse: collapse; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f0f0f0; }
th[title] { text-decoration: underline dotted; cursor: help; }
caption { caption-side: top; text-align: left; font-style: italic; padding: .2em 0; }
ul.notes { font-size: 85%; color: #444; margin: .2em 0 1em; padding-left: 1.2em; }
figure { margin: 1em 0; }
section#heatmaps figure { display: inline-block; vertical-align: top; width: calc(50% - 1.2em);
                          margin: .6em 1em .6em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 90%; color: #555; }
details { margin: .6em 0; }
details > summary { cursor: pointer; color: #245; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 85%; }
@media (max-width: 700px) {
  body { margin: 1em auto; padding: 0 .6em; }
  h1 { font-size: 150%; }
  .headline { padding: .6em .8em; }
  .headline dl { grid-template-columns: 1fr; gap: 0; }
  .headline dd { margin-bottom: .4em; }
  table { font-size: 80%; }
  section#heatmaps figure { width: 100%; margin-right: 0; }
}
"""

_NUMERIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?( / [-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)?$")


def _is_number(value: Any) -> bool:
    """Whether a cell holds a number (or a "number / number" pair), so it is right-aligned."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and bool(_NUMERIC.match(value.strip()))


def numeric_columns(block: Table) -> set[int]:
    """Indexes of the columns whose every present cell is a number (their missing cells align with them)."""
    out = set()
    for index in range(len(block.columns)):
        cells = [row[index] for row in block.rows if index < len(row)]
        present = [c for c in cells if fmt(c) != "—"]
        if present and all(_is_number(c) for c in present):
            out.add(index)
    return out


def legend_lines(block: Table) -> list[str]:
    """What is written under a table: its ``legend``, else "column: note" per noted column."""
    if block.legend is not None:
        return list(block.legend)
    return [f"{c}: {block.notes[c]}" for c in block.columns if c in block.notes]


def _html_table(block: Table) -> str:
    esc = html.escape
    caption = f"<caption>{esc(block.caption)}</caption>" if block.caption and not block.folded else ""
    head = "".join(f'<th title="{esc(block.notes[c])}">{esc(c)}</th>' if c in block.notes else f"<th>{esc(c)}</th>"
                   for c in block.columns)
    numeric = numeric_columns(block)
    body = "".join("<tr>" + "".join(f'<td class="num">{esc(fmt(v))}</td>' if i in numeric or _is_number(v)
                                    else f"<td>{esc(fmt(v))}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in block.rows)
    table = f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    lines = legend_lines(block)
    if block.legend is None:
        items = "".join(f"<li><b>{esc(c)}</b>: {esc(block.notes[c])}</li>" for c in block.columns if c in block.notes)
    else:
        items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    legend = f'<ul class="notes">{items}</ul>' if lines else ""
    out = f'<div class="table">{table}</div>{legend}'
    if block.folded:
        return f"<details><summary>{esc(block.caption or 'table')}</summary>{out}</details>"
    return out


def _html_block(block: Any) -> str:
    esc = html.escape
    if isinstance(block, Text):
        return f"<p>{esc(block.text)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>")
    if isinstance(block, Code):
        return f"<details><summary>{esc(block.summary)}</summary><pre>{esc(block.text)}</pre></details>"
    if isinstance(block, Headline):
        facts = "".join(f"<dt>{esc(label)}</dt><dd>{esc(value)}</dd>" for label, value in block.facts)
        return (f'<div class="headline"><p class="answer">{esc(block.answer)}</p>'
                + (f"<dl>{facts}</dl>" if facts else "") + "</div>")
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """One HTML page: title, subtitle, a navigation bar of the sections, then each section."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1><p>{esc(subtitle)}</p>",
             "<nav>" + "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections) + "</nav>"]
    for section in sections:
        parts.append(f'<section id="{section.id}"><h2>{esc(section.title)}</h2>')
        body = [_html_block(block) for block in section.blocks]
        if section.folded:
            summary = section.summary or f"show the {section.title.lower()}"
            parts.append(f"<details><summary>{esc(summary)}</summary>" + "\n".join(body) + "</details>")
        else:
            parts += body
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md(text: Any) -> str:
    """Text for Markdown: ``&``, ``<`` and ``>`` as HTML entities, so names never become raw HTML."""
    return html.escape(str(text), quote=False)


def _md_cell(value: Any) -> str:
    return _md(fmt(value)).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, sections: Sequence[Section], out_dir: Path) -> str:
    """The same document as Markdown (text escaped: `_md`); figure paths are written relative to ``out_dir``."""
    lines = [f"# {_md(title)}", "", _md(subtitle), ""]
    for section in sections:
        lines += [f"## {_md(section.title)}", ""]
        if section.folded:
            summary = section.summary or "show the " + section.title.lower()
            lines += [f"<details><summary>{_md(summary)}</summary>", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [_md(block.text), ""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"*{_md(block.caption)}*", ""]
                lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                lines.append("|" + "---|" * len(block.columns))
                lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
                lines.append("")
                if block.legend is None:
                    lines += [f"- **{_md(c)}**: {_md(block.notes[c])}" for c in block.columns if c in block.notes]
                else:
                    lines += [f"- {_md(line)}" for line in block.legend]
                if legend_lines(block):
                    lines.append("")
            elif isinstance(block, Figure):
                caption = _md(block.caption).replace("[", "\\[").replace("]", "\\]")
                lines += [f"![{caption}]({block.path.relative_to(out_dir).as_posix()})", ""]
            elif isinstance(block, Code):
                lines += [f"<details><summary>{_md(block.summary)}</summary>", "", "```json", block.text, "```", "",
                          "</details>", ""]
            elif isinstance(block, Headline):
                lines += [f"> **{_md(block.answer)}**", ">"]
                lines += [f"> - {_md(label)}: {_md(value)}" for label, value in block.facts]
                lines.append("")
        if section.folded:
            lines += ["</details>", ""]
    return "\n".join(lines) + "\n"
