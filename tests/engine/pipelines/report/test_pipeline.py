"""`kneuron.engine.pipelines.report.pipeline`: the report of a small hand-made run (tiny model, tiny world).

The report must be self-contained (no http(s) resource), have every section, say "not run" without scores,
show which set ids it shows, use the run's stored random baseline as chance level (and say so when there is
none), and render in headless Chromium (skipped with a reason when Chromium is not installed; install it with
``apt-get install -y chromium``).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.engine.pipelines.report.model import chance_note
from kneuron.engine.pipelines.report.pipeline import SECTIONS, SELECTION_NOTES, ReportConfig, build_report
from kneuron.engine.pipelines.sets import StoredSet
from kneuron.engine.signals.decode import decode_neurons
from tests.helpers.report_fixtures import (
    CONCEPTS,
    OLD_SET_ID,
    RUN,
    build,
    section_html,
    splits_of,
)


def num(text: str) -> str:
    """A numeric table cell as the report writes it (right-aligned)."""
    return f'<td class="num">{text}</td>'


@pytest.fixture(scope="module")
def bare(tmp_path_factory, report_world, report_model_dir) -> Path:  # noqa: ANN001
    return build(tmp_path_factory.mktemp("wh") / "bare", report_world, report_model_dir, with_scores=False)


@pytest.fixture(scope="module")
def report(report_full, tmp_path_factory):  # noqa: ANN001
    return build_report(report_full, tmp_path_factory.mktemp("report") / "out",
                        ReportConfig(heatmap_images=1, contrast_images=3, decode_top=2, k=5))


# ---------------------------------------------------------------------------------------------- the report
def test_report_is_self_contained_and_has_every_section(report) -> None:  # noqa: ANN001
    text = report.html.read_text(encoding="utf-8")
    for section_id, title in SECTIONS:
        assert title in section_html(text, section_id)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert not re.search(r"<(?:script|link|iframe)\b", text, re.IGNORECASE)
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(report.figures) == 3 + 2  # layers, overlap, suppression + one heatmap per concept
    assert "tiny-run" in section_html(text, "configuration")


def test_report_sections_hold_the_data(report, report_world) -> None:  # noqa: ANN001
    text = report.html.read_text(encoding="utf-8")
    selection = section_html(text, "selection")
    assert "circle" in selection and "stage1_only" in selection and "1:1 2:2" in selection  # circle: layers
    suppression = section_html(text, "suppression")
    assert "Evaluation new (1 concepts, 1 methods; zero ablation; 2 evaluation(s)" in suppression
    # latest evaluation only, as kneuron.engine.eval.summary.paper_tables lays it out: target BLEU-4 (0.2 + 0.4) / 2,
    # ROUGE-L the same, other (0.8 + 1.0) / 2; mention of "circle" on target 1 -> 0.5; drops 0.7 / 0.1
    assert ("<td>two_stage</td>" + num("3") + num("0.300") + num("0.300") + num("0.900") + num("0.900")
            + num("0.500")) in suppression  # 3 significant digits everywhere
    assert "<td>unmodified</td>" + num("—") + num("1.00") * 5 in suppression  # "—" aligns with its numbers
    assert num("0.700") + num("0.100") + num("0.600") in suppression  # BLEU-4 drop target, drop other, specificity
    assert '<th title="drop target − drop other (higher: more specific suppression)">BLEU-4 specificity</th>' in \
        suppression and '<th title="share of captions that name the concept, on images of the set&#x27;s concept">' \
        "target mention</th>" in suppression
    assert "<li>drop target / drop other: before − after on the set" in suppression  # one line per family
    heat = section_html(text, "heatmaps")
    assert heat.count("<img") == 2 and "left original, right inpainted" in heat
    contrast = section_html(text, "contrast")
    assert "all concepts (mean over concepts)" in contrast and "stage1_only" in contrast
    assert "lift minus random" in contrast and "Holm p" in contrast
    assert "<th>random</th>" in contrast and "stored random baseline set of each concept" in contrast
    decoding = section_html(text, "decoding")
    assert "hit rate" in decoding and "random (plain / norm)" in decoding
    circle = decoding[decoding.index("circle: strongest 2 two_stage neurons"):]
    assert circle.index("<td>2:5</td>") < circle.index("<td>1:7</td>")  # by score, not by (layer, unit)
    summary = json.loads(report.summary_json.read_text())
    assert summary["run_id"] == RUN
    pooled = summary["heatmap_contrast"]["pooled"]["two_stage"]
    n_eval = sum(min(3, len(evaluation)) for _, evaluation in splits_of(report_world).values())  # contrast_images=3
    assert pooled["n"] == n_eval and pooled["images_low"] <= pooled["estimate"] <= pooled["images_high"]
    assert set(summary["heatmap_contrast"]["vs_random"]) == {"two_stage", "stage1_only"}
    assert set(summary["heatmap_contrast"]["per_concept"]) == set(CONCEPTS)
    assert set(summary["heatmap_contrast"]["pooled"]) == {"two_stage", "stage1_only", "random"}
    assert summary["heatmap_contrast"]["value"] == "magnitude"
    hit = summary["decoding_hit_rate"]
    assert set(hit["per_concept"]["circle"]) == {"two_stage", "stage1_only", "random"}
    assert hit["pooled"]["two_stage"]["neurons"] == 5 and hit["pooled"]["random"]["neurons"] == 5
    assert hit["pooled"]["two_stage"]["plain_interval"]["n_concepts"] == 2
    assert "all concepts (pooled neurons)" in decoding


def test_report_leads_with_the_answer_and_ends_with_the_folded_configuration(report) -> None:  # noqa: ANN001
    text = report.html.read_text(encoding="utf-8")
    order = re.findall(r'<section id="([^"]+)">', text)
    assert order[0] == "answer" and order[-1] == "configuration"
    assert order == [s for s, _ in SECTIONS if s in order]  # the page follows SECTIONS
    answer = section_html(text, "answer")
    # fixture: one method (two_stage) on one concept and no random control: nothing to compare, nothing ranked;
    # two_stage lowers the mention of "circle" on its 2 images from 1 to 0.5: T = 0.5, with its interval and n
    assert ('<div class="headline"><p class="answer">No method exceeds every other in T - O at 95%, so the methods '
            "are not ranked (the run has no random control)") in answer
    for label in ("model", "run", "concepts", "two_stage sets", "measure", "two_stage", "evaluation"):
        assert f"<dt>{html.escape(label)}</dt>" in answer
    assert "n = 2 target images, 1 other-object mentions, 1 concepts" in answer
    assert "2: circle, square" in answer and "3 layers × 96 FFN units = 288 neurons" in answer
    assert report.summary["answer"]["answer"] is None
    [area] = report.summary["answer"]["specificity"]
    assert area["method"] == "two_stage" and area["n_target_images"] == 2
    configuration = section_html(text, "configuration")
    assert configuration.startswith("<h2>Run configuration</h2>\n<details><summary>show the run&#x27;s configuration")
    assert "<details open" not in configuration and "config_json" in configuration
    assert text.index('id="answer"') < text.index('id="selection"') < text.index('id="configuration"')


def test_report_without_scores_says_the_question_is_not_answered(bare, tmp_path) -> None:  # noqa: ANN001
    result = build_report(bare, tmp_path / "r", ReportConfig(with_model=False))
    answer = section_html(result.html.read_text(encoding="utf-8"), "answer")
    assert "Not answered yet: this run has no suppression evaluation (run `kneuron suppress`)" in answer
    assert result.summary["answer"]["answer"] is None


def test_report_explains_its_columns_and_prints_three_significant_digits(report) -> None:  # noqa: ANN001
    text = report.html.read_text(encoding="utf-8")
    selection = section_html(text, "selection")
    for column, words in (("|C_k|", "stage2_only: no stage-1 filter, so every FFN unit of the model"),
                          ("threshold_a", "stage-1 threshold applied to Δ"), ("selected", "neurons in the set")):
        assert f'<th title="{html.escape(SELECTION_NOTES[column])}">{html.escape(column)}</th>' in selection
        assert words in html.unescape(selection)
    cells = [html.unescape(c) for c in re.findall(r'<td class="num">([^<]*)</td>', text)]
    decimals = [c for part in cells for c in part.split(" / ") if "." in c and "e" not in c]
    assert decimals and all(len(c.lstrip("-").replace(".", "").lstrip("0")) == 3 for c in decimals), decimals
    long = re.findall(r"<td[^>]*>(\d+\.\d{4,})</td>", text)  # 4+ decimals only as 3 significant digits (0.0591)
    assert all(len(c.replace(".", "").lstrip("0")) == 3 for c in long), long


def test_report_figures_have_colour_bars_and_fitted_axes(report) -> None:  # noqa: ANN001
    heatmaps = [f for f in report.figures if f.name.startswith("heatmap-")]
    assert heatmaps
    for path in heatmaps:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        columns = pixels[:, -60:].reshape(-1, 3)
        # the jet colour bar on the right: dark red at the top (1.0) to dark blue at the bottom (0.0)
        red, blue = (columns[:, 0] > 120) & (columns[:, 2] < 40), (columns[:, 2] > 120) & (columns[:, 0] < 40)
        assert red.any() and blue.any()
    from kneuron.engine.reporting.plots import suppression_figure

    rows = report.summary["suppression"]["summary"]
    drops = [{"method": r["method"], "group": r["group"], "metric": r["measure"], "value": r["drop"]} for r in rows
             if r["reference"] == "unmodified" and r["group"] in ("target", "other")]
    figure = suppression_figure(drops)
    for ax in figure.axes:
        low, high = ax.get_ylim()
        heights = [patch.get_height() for patch in ax.patches]
        span = max(heights) - min(0.0, *heights)
        assert low <= min(0.0, *heights) and high >= max(heights) and high - low < 1.5 * span + 0.01
    (legend,) = figure.legends
    figure.canvas.draw()
    box = legend.get_window_extent()
    for ax in figure.axes:
        assert not box.overlaps(ax.get_window_extent())  # the legend covers no bar


def test_report_shows_the_set_ids_it_shows(report) -> None:  # noqa: ANN001
    selection = section_html(report.html.read_text(encoding="utf-8"), "selection")
    for concept in CONCEPTS:
        for method in ("two_stage", "stage1_only", "random"):
            assert f"<td>{concept}</td><td>{method}</td><td>{concept}-{method}</td>" in selection
    assert "<td>current</td>" in selection and OLD_SET_ID not in selection
    assert {(s["concept"], s["method"], s["set_id"], s["given"]) for s in report.summary["sets"]} == {
        (c, m, f"{c}-{m}", False) for c in CONCEPTS for m in ("two_stage", "stage1_only", "random")}


def test_report_with_set_shows_that_set(report_full, tmp_path) -> None:  # noqa: ANN001
    result = build_report(report_full, tmp_path / "r", ReportConfig(set_ids=(OLD_SET_ID,), heatmap_images=0,
                                                             contrast_images=1, decode_top=2, k=5, max_concepts=1))
    text = result.html.read_text(encoding="utf-8")
    selection = section_html(text, "selection")
    assert f"<td>circle</td><td>two_stage</td><td>{OLD_SET_ID}</td>{num('2')}<td>--set</td>" in selection
    assert "<td>circle</td><td>0:2</td>" in selection  # the layers of the set shown: two neurons in layer 0
    assert "<td>circle</td><td>two_stage</td>" + num("4") + num("10") + num("2") in selection
    decoding = section_html(text, "decoding")
    circle = decoding[decoding.index("circle: strongest 2 two_stage neurons"):]
    assert circle.index("<td>0:1</td>") < circle.index("<td>0:2</td>") and "<td>2:5</td>" not in circle
    assert {"concept": "circle", "method": "two_stage", "set_id": OLD_SET_ID, "given": True} in result.summary["sets"]
    # the evaluation's own sets are what the suppression section reports, whatever is shown
    assert "<td>two_stage</td>" + num("3") in section_html(text, "suppression")


def test_report_set_errors(report_full, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(KneuronError, match="no neuron set 'nope' in run tiny-run"):
        build_report(report_full, tmp_path / "r", ReportConfig(set_ids=("nope",), with_model=False))
    with pytest.raises(KneuronError, match="set circle-stage1_only is a stage1_only set; the report shows "
                                           "two_stage sets"):
        build_report(report_full, tmp_path / "r", ReportConfig(set_ids=("circle-stage1_only",), with_model=False))
    with pytest.raises(KneuronError, match="both two_stage sets of concept 'circle'; give at most one"):
        build_report(report_full, tmp_path / "r",
                     ReportConfig(set_ids=(OLD_SET_ID, "circle-two_stage"), with_model=False))


def test_report_without_random_set_says_so(bare, tmp_path) -> None:  # noqa: ANN001
    result = build_report(bare, tmp_path / "r", ReportConfig(heatmap_images=0, contrast_images=1, max_concepts=1))
    text = result.html.read_text(encoding="utf-8")
    for section_id in ("contrast", "decoding"):
        part = section_html(text, section_id)
        assert "This run has no stored &#x27;random&#x27; baseline set, so no chance level is shown" in part
        assert "random" not in re.sub(r"<p>.*?</p>", "", part, flags=re.DOTALL)  # no random column
    assert set(result.summary["heatmap_contrast"]["pooled"]) == {"two_stage", "stage1_only"}


def test_chance_note_names_concepts_without_a_random_set() -> None:
    random = StoredSet("r", "circle", "random", {}, None, [(0, 1, None)])
    note = chance_note({("circle", "random"): random}, ["circle", "square"])
    assert "stored random baseline set of each concept" in note and note.endswith("for: square.")
    assert "no chance level" in chance_note({}, ["circle"])


def test_markdown_has_every_section_and_its_figures(report) -> None:  # noqa: ANN001
    text = report.markdown.read_text(encoding="utf-8")
    for _, title in SECTIONS:
        assert f"## {title}" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(report.figures)
    for link in links:
        assert (report.out_dir / link).is_file() and not link.startswith("/")


def test_decoded_tokens_in_the_report_match_decode_neurons(report, report_model_dir) -> None:  # noqa: ANN001
    from kneuron.engine.models import load_model

    adapter = load_model(str(report_model_dir))
    (top,) = decode_neurons(adapter, [(2, 5)], k=5)
    decoding = section_html(report.html.read_text(encoding="utf-8"), "decoding")
    assert html.escape(" ".join(repr(t) for t in top.tokens)) in decoding


def test_report_without_scores_says_not_run(bare, tmp_path) -> None:  # noqa: ANN001
    result = build_report(bare, tmp_path / "r", ReportConfig(with_model=False))
    text = result.html.read_text(encoding="utf-8")
    assert "not run" in section_html(text, "suppression")
    for section_id in ("heatmaps", "contrast", "decoding"):
        assert "Skipped" in section_html(text, section_id)
    assert len(result.figures) == 2


def test_report_errors(bare, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(KneuronError, match="unknown run 'nope'; runs in the warehouse: tiny-run"):
        build_report(bare, tmp_path / "r", ReportConfig(run_id="nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(KneuronError, match="is a file"):
        build_report(bare, tmp_path / "file", ReportConfig())


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


def screenshot(browser: str, page: Path, shot: Path, width: int, height: int, profile: Path) -> np.ndarray:
    """A headless-Chromium screenshot of ``page`` at ``width`` x ``height`` CSS px, as RGB pixels."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
               f"--screenshot={shot}", f"--window-size={width},{height}", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"no screenshot; chromium said: {done.stderr[-2000:]}"
    return np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)


def test_report_renders_in_headless_chromium(report, tmp_path) -> None:  # noqa: ANN001
    """Desktop (1200 px) and narrow (420 px, a phone) screenshots, kept next to the report for a look."""
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): cannot screenshot the report")
    for name, width in (("screenshot.png", 1200), ("screenshot-narrow.png", 420)):
        shot = tmp_path / name
        pixels = screenshot(browser, report.html, shot, width, 2000, tmp_path / f"profile-{width}")
        assert pixels.shape[:2] == (2000, width)
        assert (pixels < 250).any(axis=-1).mean() > 0.02  # text, tables and figures, not a blank page
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # the colour plots and heatmaps were drawn
        headline = np.all(pixels == (243, 248, 253), axis=-1)  # the answer's box (#f3f8fd) ...
        assert headline[:700].any(axis=1).sum() > 40  # ... is on the first screen
        keep = Path(report.out_dir) / name
        shutil.copy(shot, keep)
        print(f"chromium screenshot of the report ({width} px): {keep}")


# ---------------------------------------------------------------------------------------------- queries
def test_report_queries(report_full) -> None:  # noqa: ANN001
    shown = ["circle-two_stage", "square-two_stage", "circle-stage1_only"]
    with queries.connect(report_full) as con:
        sizes = queries.run(con, "report_set_sizes", {"set_ids": shown}).to_pylist()
        assert [(r["concept"], r["method"], r["n_images"], r["n_candidates"], r["n_selected"]) for r in sizes] == [
            ("circle", "stage1_only", 4, 10, 3), ("circle", "two_stage", 4, 10, 3), ("square", "two_stage", 4, 10, 2)]
        layers = queries.run(con, "report_layers", {"set_ids": shown[:2]}).to_pylist()
        assert [(r["concept"], r["layer"], r["n_neurons"]) for r in layers] == [
            ("circle", 1, 1), ("circle", 2, 2), ("square", 0, 1), ("square", 2, 1)]
        overlap = queries.run(con, "report_overlap", {"set_ids": shown[:2]}).to_pylist()
        assert [(r["concept_a"], r["concept_b"], r["n_shared"], r["jaccard"]) for r in overlap] == [
            ("circle", "square", 1, 0.25)]  # 2:5 shared; union of 3 + 2 - 1 = 4
        images = queries.run(con, "report_images", {"run_id": RUN}).to_pylist()
        circle = [r["split"] for r in images if r["concept"] == "circle"]
        assert circle == sorted(circle, key=lambda s: s != "eval") and "eval" in circle
        evals = queries.run(con, "report_evals", {"run_id": RUN}).to_pylist()
        assert [(e["eval_id"], e["n_suppressed"], e["n_methods"], e["n_concepts"]) for e in evals] == [
            ("new", 4, 1, 1), ("old", 4, 1, 1)]


def test_report_queries_match_the_shared_analyses_on_the_current_sets(report_full) -> None:  # noqa: ANN001
    """With the current sets, report_set_sizes / report_layers / report_overlap give the numbers of the bundled
    set_sizes / layer_distribution / concept_overlap analyses."""
    from kneuron.engine.pipelines.sets import current_set_ids

    with queries.connect(report_full) as con:
        ids = current_set_ids(con, RUN)
        two_stage = [s for (_, m), s in ids.items() if m == "two_stage"]
        pick = ["concept", "method", "n_images", "n_candidates", "n_selected", "threshold_a", "threshold_g"]
        assert queries.run(con, "report_set_sizes", {"set_ids": list(ids.values())}).select(pick).to_pylist() == \
            queries.run(con, "set_sizes", {"run_id": RUN, "method": None}).select(pick).to_pylist()
        pick = ["concept", "layer", "n_neurons", "share"]
        assert queries.run(con, "report_layers", {"set_ids": two_stage}).select(pick).to_pylist() == \
            queries.run(con, "layer_distribution", {"run_id": RUN, "method": "two_stage"}).select(pick).to_pylist()
        pick = ["concept_a", "concept_b", "n_a", "n_b", "n_shared", "jaccard"]
        assert queries.run(con, "report_overlap", {"set_ids": two_stage}).select(pick).to_pylist() == \
            queries.run(con, "concept_overlap", {"run_id": RUN, "method": "two_stage"}).select(pick).to_pylist()
