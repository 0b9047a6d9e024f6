"""Render a list of `engine.document.Section` as one self-contained HTML page or as Markdown.

HTML: inline CSS, every figure a base64 ``data:`` URI, no script and no external resource. Markdown: figures
linked by their path relative to the Markdown file's folder.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.document import Code, Figure, Section, Table, Text, fmt

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
caption { caption-side: top; text-align: left; font-style: italic; padding: .2em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 90%; color: #555; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 85%; }
"""


def render_html(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """One HTML page: title, subtitle, a navigation bar of the sections, then each section."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1><p>{esc(subtitle)}</p>",
             "<nav>" + "".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections) + "</nav>"]
    for section in sections:
        parts.append(f'<section id="{section.id}"><h2>{esc(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Text):
                parts.append(f"<p>{esc(block.text)}</p>")
            elif isinstance(block, Table):
                caption = f"<caption>{esc(block.caption)}</caption>" if block.caption else ""
                head = "".join(f"<th>{esc(c)}</th>" for c in block.columns)
                body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>"
                               for row in block.rows)
                parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                parts.append(f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{esc(block.caption)}</figcaption></figure>")
            elif isinstance(block, Code):
                parts.append(f"<details><summary>{esc(block.summary)}</summary><pre>{esc(block.text)}</pre></details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, sections: Sequence[Section], out_dir: Path) -> str:
    """The same document as Markdown; figure paths are written relative to ``out_dir``."""
    lines = [f"# {title}", "", subtitle, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
                lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                lines.append("|" + "---|" * len(block.columns))
                lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
                lines.append("")
            elif isinstance(block, Figure):
                lines += [f"![{block.caption}]({block.path.relative_to(out_dir).as_posix()})", ""]
            elif isinstance(block, Code):
                lines += [f"<details><summary>{block.summary}</summary>", "", "```json", block.text, "```", "",
                          "</details>", ""]
    return "\n".join(lines) + "\n"
