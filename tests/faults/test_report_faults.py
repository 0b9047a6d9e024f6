"""The report says when the evaluation it shows may still be being written (it used to show a running
`kneuron suppress`'s partial evaluation as "the latest" without a word), and report.md never carries raw HTML
from names (report.html escaped them, report.md did not)."""
from __future__ import annotations

from pathlib import Path

from kneuron.engine.pipelines.report.pipeline import ReportConfig, build_report
from kneuron.engine.reporting.document import Section, Table, Text
from kneuron.engine.reporting.render import render_markdown
from kneuron.warehouse.layout import LOCK_FILE
from kneuron.warehouse.lock import WriterLock, writer_pid

CONFIG = ReportConfig(heatmap_images=0, contrast_images=1, decode_top=2, k=5, max_concepts=1)


def test_report_marks_an_evaluation_being_written(report_full, tmp_path) -> None:  # noqa: ANN001
    root = Path(report_full)
    assert writer_pid(root, root / LOCK_FILE) is None
    quiet = build_report(report_full, tmp_path / "quiet", CONFIG)
    assert quiet.summary["suppression"]["being_written"] is False
    assert "may still be being written" not in quiet.markdown.read_text(encoding="utf-8")
    lock = WriterLock(root, root / LOCK_FILE)  # what a running `kneuron suppress` holds
    lock.acquire()
    try:
        assert writer_pid(root, root / LOCK_FILE) not in (None,)
        busy = build_report(report_full, tmp_path / "busy", CONFIG)
    finally:
        lock.release()
    eval_id = busy.summary["suppression"]["eval_id"]
    assert busy.summary["suppression"]["being_written"] is True
    text = busy.markdown.read_text(encoding="utf-8")
    assert f"Note: evaluation {eval_id} may still be being written" in text
    assert "may still be being written" in busy.html.read_text(encoding="utf-8")


def test_report_md_escapes_names(tmp_path) -> None:
    name = '<img src=x onerror="alert(1)">'
    parts = [Section("s", f"About {name}", [Text(f"concept {name}"), Table(["concept"], [[name]], caption=name)])]
    text = render_markdown(f"Report {name}", name, parts, tmp_path)
    assert "<img" not in text and text.count("&lt;img src=x onerror=\"alert(1)\"&gt;") == 6
