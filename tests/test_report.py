"""`kneuron report` / `heatmap` / `decode` and the plots, on a small warehouse built here (tiny model, tiny world).

The report must be self-contained (no http(s) resource), have every section, say "not run" without scores,
and render in headless Chromium (skipped with a reason when Chromium is not installed; install it with
``apt-get install -y chromium``).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import queries
import warehouse
from engine.data.coco import CocoDataset, split_ident_eval
from engine.data.world import WorldConfig, generate_world
from engine.decode import decode_neurons
from engine.models.minigpt4_adapter import save_minigpt4
from engine.plots import layer_distribution_plot, overlap_matrix, overlap_matrix_plot, suppression_plot
from engine.report import SECTIONS, ReportConfig, build_report
from engine.suppress import as_neuron_set, caption_images
from tests.hf_tiny import tiny_adapter
from tests.cli_runner import run_cli

RUN = "tiny-run"
CONCEPTS = ("circle", "square")
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
SETS = {  # (concept, method) -> [(layer, unit, score)]
    ("circle", "two_stage"): [(2, 5, 0.9), (1, 7, 0.5), (2, 11, 0.3)],
    ("circle", "stage1_only"): [(0, 3, 1.0), (2, 5, 0.8), (1, 2, 0.1)],
    ("square", "two_stage"): [(2, 5, 0.7), (0, 40, 0.6)],
    ("square", "stage1_only"): [(1, 9, 0.4), (0, 40, 0.2)],
}




@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:  # noqa: ANN001
    return generate_world(tmp_path_factory.mktemp("world") / "w", WorldConfig(n_train=0, n_val=0, n_test=16))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # noqa: ANN001
    adapter = tiny_adapter("minigpt4-qformer")
    return save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path_factory.mktemp("model") / "m")


def splits_of(world: Path) -> dict[str, tuple[list[int], list[int]]]:
    data = CocoDataset(world, "test")
    return {c: split_ident_eval(data.images_with(c), 0.5, 0, key=c) for c in CONCEPTS}


def build(root: Path, world: Path, model_dir: Path, with_scores: bool) -> Path:
    from engine.ingest import model_fingerprint
    from engine.models import load_model

    fingerprint = model_fingerprint(load_model(str(model_dir)))
    config = {"identity": {"dataset": str(world), "split": "test"},
              "config": {"model": str(model_dir), "inpainter": "telea", "inpaint_radius": 3.0, "margin_px": 1.0}}
    with warehouse.Warehouse.open(root, create=True) as wh, wh.batch() as batch:
        batch.add("runs", {
            "run_id": [RUN], "created_at": [T0], "model_name": [str(model_dir)], "model_hash": [fingerprint],
            "hook_site": ["blocks.{layer}.mlp.down_proj.input"], "prompt": ["<Img><ImageHere></Img> Describe."],
            "positions": ["image"], "n_positions": [4], "n_layers": [3], "d_ff": [96], "dtype": ["float32"],
            "inpainter": ['{"name": "telea"}'], "config_json": [json.dumps(config)], "kneuron_version": ["test"]})
        rows: dict[str, list] = {k: [] for k in ("run_id", "concept", "image_id", "split")}
        for concept, (ident, evaluation) in splits_of(world).items():
            for image_id, split in [(i, "ident") for i in ident] + [(i, "eval") for i in evaluation]:
                for key, value in zip(rows, (RUN, concept, image_id, split)):
                    rows[key].append(value)
        batch.add("splits", rows)
        sets: dict[str, list] = {k: [] for k in ("set_id", "run_id", "concept", "method", "params_json", "layer",
                                                 "unit", "score", "created_at")}
        for (concept, method), members in SETS.items():
            params = {"resolved": {"n_images": 4, "n_candidates": 10, "threshold_a": 0.1, "threshold_g": 0.2}}
            for layer, unit, score in members:
                for key, value in zip(sets, (f"{concept}-{method}", RUN, concept, method, json.dumps(params), layer,
                                             unit, score, T0)):
                    sets[key].append(value)
        batch.add("neuron_sets", sets)
        if with_scores:
            add_scores(batch, world)
    return root


def evaluation_images(world: Path) -> tuple[list[int], list[int]]:
    """Two circle images (target) and two images without a circle (other) of the world's test split."""
    data = CocoDataset(world, "test")
    circles = data.images_with("circle")
    others = [i for i in data.image_ids() if i not in circles]
    return circles[:2], others[:2]


def add_scores(batch, world: Path) -> None:  # noqa: ANN001
    """Two evaluations of circle/two_stage, stored as `engine.evaluate` stores them (method 'unmodified' for the
    unmodified captions and their scores); the older one's numbers must not count."""
    target, other = evaluation_images(world)
    scores: dict[str, list] = {k: [] for k in ("eval_id", "run_id", "set_id", "method", "concept", "group",
                                               "image_id", "metric", "reference", "value")}
    captions: dict[str, list] = {k: [] for k in ("eval_id", "run_id", "set_id", "method", "concept", "group",
                                                 "image_id", "condition", "text")}
    after = {("old", "target"): [0.9, 0.9], ("new", "target"): [0.2, 0.4], ("old", "other"): [0.1, 0.1],
             ("new", "other"): [0.8, 1.0]}
    texts = {"target": [("a red circle and a blue star", "a blue star"), ("a green circle", "a green circle")],
             "other": [("a red square above a star", "a red square above a circle"), ("a blue star", "a blue")]}
    for (eval_id, group), values in after.items():
        for image_id, value, (before_text, after_text) in zip(target if group == "target" else other, values,
                                                              texts[group]):
            for method, set_id, condition, text, score in (
                    ("unmodified", None, "unmodified", before_text, 1.0),
                    ("two_stage", "circle-two_stage", "suppressed", after_text, value)):
                row = (eval_id, RUN, set_id, method, "circle", group, image_id, condition,
                       text if eval_id == "new" else "circle")
                for key, v in zip(captions, row):
                    captions[key].append(v)
                for metric in ("bleu4", "rougeL"):
                    for key, v in zip(scores, (eval_id, RUN, set_id, method, "circle", group, image_id, metric,
                                               "unmodified", score)):
                        scores[key].append(v)
    batch.add("scores", scores)
    batch.add("captions", captions)
    batch.add("evals", {"eval_id": ["old", "new"], "run_id": [RUN, RUN], "created_at": [T0, T0 + timedelta(1)],
                        "config_json": ["{}", "{}"]})


@pytest.fixture(scope="module")
def full(tmp_path_factory, world, model_dir) -> Path:  # noqa: ANN001
    return build(tmp_path_factory.mktemp("wh") / "full", world, model_dir, with_scores=True)


@pytest.fixture(scope="module")
def bare(tmp_path_factory, world, model_dir) -> Path:  # noqa: ANN001
    return build(tmp_path_factory.mktemp("wh") / "bare", world, model_dir, with_scores=False)


@pytest.fixture(scope="module")
def report(full, tmp_path_factory):  # noqa: ANN001
    return build_report(full, tmp_path_factory.mktemp("report") / "out",
                        ReportConfig(heatmap_images=1, contrast_images=3, decode_top=2, k=5))


# ---------------------------------------------------------------------------------------------- the report
def section_html(text: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', text, re.DOTALL)
    assert match, f"no section {section_id}"
    return match.group(1)


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


def test_report_sections_hold_the_data(report, world) -> None:  # noqa: ANN001
    text = report.html.read_text(encoding="utf-8")
    selection = section_html(text, "selection")
    assert "circle" in selection and "stage1_only" in selection and "1:1 2:2" in selection  # circle: layers
    suppression = section_html(text, "suppression")
    assert "Evaluation new (1 concepts, 1 methods; 2 evaluation(s)" in suppression
    # latest evaluation only, as engine.eval.summary.paper_tables lays it out: target BLEU-4 (0.2 + 0.4) / 2,
    # ROUGE-L the same, other (0.8 + 1.0) / 2; mention of "circle" on target 1 -> 0.5; drops 0.7 / 0.1
    assert "<td>two_stage</td><td>3</td><td>0.3</td><td>0.3</td><td>0.9</td><td>0.9</td><td>0.5</td>" in suppression
    assert "<td>unmodified</td><td>—</td><td>1</td><td>1</td><td>1</td><td>1</td><td>1</td>" in suppression
    assert "<td>0.7</td><td>0.1</td><td>0.6</td>" in suppression  # BLEU-4 drop target, drop other, specificity
    heat = section_html(text, "heatmaps")
    assert heat.count("<img") == 2 and "left original, right inpainted" in heat
    contrast = section_html(text, "contrast")
    assert "all concepts (pooled images)" in contrast and "stage1_only" in contrast and "random control" in contrast
    decoding = section_html(text, "decoding")
    assert "hit rate" in decoding
    circle = decoding[decoding.index("circle: strongest 2 two_stage neurons"):]
    assert circle.index("<td>2:5</td>") < circle.index("<td>1:7</td>")  # by score, not by (layer, unit)
    summary = json.loads(report.summary_json.read_text())
    assert summary["run_id"] == RUN
    pooled = summary["heatmap_contrast"]["pooled"]["two_stage"]
    n_eval = sum(min(3, len(evaluation)) for _, evaluation in splits_of(world).values())  # contrast_images=3
    assert 0.0 <= pooled["vs_rest"] <= 1.0 and pooled["images"] == n_eval
    assert pooled["vs_other_objects"] is None or 0.0 <= pooled["vs_other_objects"] <= 1.0
    assert set(summary["heatmap_contrast"]["per_concept"]) == set(CONCEPTS)
    assert set(summary["heatmap_contrast"]["pooled"]) == {"two_stage", "stage1_only", "random control"}
    assert summary["heatmap_contrast"]["value"] == "magnitude"
    hit = summary["decoding_hit_rate"]
    assert set(hit["per_concept"]["circle"]) == {"two_stage", "stage1_only", "random control"}
    assert hit["pooled"]["two_stage"]["neurons"] == 5 and hit["pooled"]["random control"]["neurons"] == 5
    assert "all concepts (pooled neurons)" in decoding


def test_markdown_has_every_section_and_its_figures(report) -> None:  # noqa: ANN001
    text = report.markdown.read_text(encoding="utf-8")
    for _, title in SECTIONS:
        assert f"## {title}" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(report.figures)
    for link in links:
        assert (report.out_dir / link).is_file() and not link.startswith("/")


def test_decoded_tokens_in_the_report_match_decode_neurons(report, model_dir) -> None:  # noqa: ANN001
    from engine.models import load_model

    adapter = load_model(str(model_dir))
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


def test_report_notes_a_different_model(bare, tmp_path) -> None:  # noqa: ANN001
    from engine.report import RunContext

    other = tiny_adapter("minigpt4-qformer", seed=1)
    folder = save_minigpt4(other.model, other.tokenizer, other.spec, tmp_path / "other")
    ctx = RunContext(bare)
    ctx.load_model(str(folder))
    ctx.close()
    assert ctx.notes == [f"the loaded model {str(folder)!r} is not the one that recorded the run (fingerprint "
                         f"differs from {ctx.run['model_hash']})"]


def test_report_errors(bare, tmp_path) -> None:  # noqa: ANN001
    from engine.errors import KneuronError

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


def test_report_renders_in_headless_chromium(report, tmp_path) -> None:  # noqa: ANN001
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): cannot screenshot the report")
    shot = tmp_path / "report.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1200,2000", report.html.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"no screenshot; chromium said: {done.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels < 250).any(axis=-1).mean() > 0.02  # text, tables and figures, not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # the colour plots and heatmaps were drawn
    keep = Path(report.out_dir) / "screenshot.png"
    shutil.copy(shot, keep)
    print(f"chromium screenshot of the report: {keep}")


# ---------------------------------------------------------------------------------------------- queries
def test_report_queries(full) -> None:  # noqa: ANN001
    with warehouse.connect(full) as con:
        rows = queries.run(con, "report_neurons", {"run_id": RUN, "method": "two_stage"}).to_pylist()
        assert [(r["concept"], r["layer"], r["unit"]) for r in rows] == [
            ("circle", 2, 5), ("circle", 1, 7), ("circle", 2, 11), ("square", 2, 5), ("square", 0, 40)]
        members = queries.run(con, "report_set", {"run_id": RUN, "set_id": "square-stage1_only"}).to_pylist()
        assert [(r["layer"], r["unit"]) for r in members] == [(1, 9), (0, 40)]
        images = queries.run(con, "report_images", {"run_id": RUN}).to_pylist()
        circle = [r["split"] for r in images if r["concept"] == "circle"]
        assert circle == sorted(circle, key=lambda s: s != "eval") and "eval" in circle
        evals = queries.run(con, "report_evals", {"run_id": RUN}).to_pylist()
        assert [(e["eval_id"], e["n_suppressed"], e["n_methods"], e["n_concepts"]) for e in evals] == [
            ("new", 4, 1, 1), ("old", 4, 1, 1)]


def test_random_control_is_seeded_and_sized(model_dir) -> None:  # noqa: ANN001
    from engine.models import load_model
    from engine.report import random_control

    adapter = load_model(str(model_dir))
    first = random_control(adapter, "circle", 7, seed=0)
    assert first == random_control(adapter, "circle", 7, seed=0) and len(set(first)) == 7
    assert first != random_control(adapter, "square", 7, seed=0) != random_control(adapter, "circle", 7, seed=1)
    assert all(0 <= layer < 3 and 0 <= unit < 96 for layer, unit in first)


# ---------------------------------------------------------------------------------------------- plots
def not_blank(path: Path) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def test_plots(tmp_path) -> None:  # noqa: ANN001
    import pandas as pd
    import pyarrow as pa

    layers = pa.table({"concept": ["a", "a", "b"], "layer": [0, 3, 3], "n_neurons": [2, 5, 1]})
    assert not_blank(layer_distribution_plot(layers, tmp_path / "l.png", n_layers=4))
    overlap = pd.DataFrame({"concept_a": ["a", "a", "b"], "concept_b": ["b", "c", "c"], "jaccard": [0.5, 0.0, 0.25]})
    concepts, matrix = overlap_matrix(overlap)
    assert concepts == ["a", "b", "c"]
    np.testing.assert_allclose(matrix, [[1, 0.5, 0], [0.5, 1, 0.25], [0, 0.25, 1]])
    assert not_blank(overlap_matrix_plot(overlap, tmp_path / "o.png"))
    sup = [{"method": m, "group": g, "metric": k, "value": v} for m, g, k, v in
           [("two_stage", "target", "bleu4", 0.2), ("two_stage", "other", "bleu4", 0.9),
            ("random", "target", "bleu4", 0.8), ("random", "other", "bleu4", 0.85)]]
    drops = {"method": ["two_stage"], "group": ["target"], "before": [0.9], "after": [0.1]}
    path = suppression_plot(sup, tmp_path / "s.png", mention_rates=drops)
    assert not_blank(path) and Image.open(path).width > 600
    assert Image.open(suppression_plot([], tmp_path / "e.png")).size[0] > 0
    from engine.errors import KneuronError

    with pytest.raises(KneuronError, match="missing columns"):
        layer_distribution_plot([{"concept": "a"}], tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------- CLIs
def test_cli_heatmap_from_the_run(full, tmp_path, capsys) -> None:  # noqa: ANN001
    image_id = splits_of(Path(json.loads(_config(full))["identity"]["dataset"]))["circle"][1][0]
    out = tmp_path / "h" / "circle.png"
    code, stdout, err = run_cli(["heatmap", "--warehouse", str(full), "--concept", "circle", "--image-id",
                                 str(image_id), "--out", str(out)], capsys)
    assert (code, err) == (0, "")
    assert f"wrote {out} (536x290): circle (two_stage, 3 neurons) on image {image_id}" in stdout
    assert Image.open(out).size == (536, 290)  # two 64 px panels scaled to 256, labels and gaps


def _config(root: Path) -> str:
    with warehouse.connect(root) as con:
        return con.execute("SELECT config_json FROM runs").fetchone()[0]


def test_cli_heatmap_standalone_and_errors(model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "o.png"
    code, stdout, _ = run_cli(["heatmap", "--model", str(model_dir), "--neuron", "2:5", "--neuron", "0:1",
                               "--image", str(image), "--out", str(out)], capsys)
    assert code == 0 and "2 neuron(s)" in stdout
    assert Image.open(out).size == (round(70 * 256 / 50) * 2 + 24, 256 + 18 + 16)
    code, _, err = run_cli(["heatmap", "--model", str(model_dir), "--neuron", "2-5", "--image", str(image),
                            "--out", str(out)], capsys)
    assert code == 2 and err.strip() == "kneuron: error: bad neuron '2-5'; expected LAYER:UNIT, e.g. 12:3071"
    code, _, err = run_cli(["heatmap", "--model", str(model_dir), "--neuron", "2:5", "--image",
                            str(tmp_path / "missing.png"), "--out", str(out)], capsys)
    assert code == 2 and "image file not found" in err and len(err.strip().splitlines()) == 1


def test_cli_decode(full, model_dir, capsys) -> None:  # noqa: ANN001
    code, stdout, err = run_cli(["decode", "--warehouse", str(full), "--concept", "circle", "--k", "4"], capsys)
    assert code == 0, err
    from engine.models import load_model

    adapter = load_model(str(model_dir))
    for decoded in decode_neurons(adapter, [(2, 5), (1, 7), (2, 11)], k=4):
        assert " ".join(repr(t) for t in decoded.tokens) in stdout
    assert "circle (two_stage, 3 neurons), run tiny-run: top 4 tokens without the final norm" in stdout
    assert "concept-word hit rate:" in stdout
    code, stdout, _ = run_cli(["decode", "--model", str(model_dir), "--neuron", "1:3", "--final-norm"], capsys)
    assert code == 0 and "with the final norm" in stdout and "1:3" in stdout
    code, _, err = run_cli(["decode", "--warehouse", str(full), "--concept", "heart"], capsys)
    assert code == 2 and "no two_stage neuron set for concept 'heart' in run tiny-run" in err


def test_cli_caption(full, model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    from engine.models import load_model

    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"c{seed}.png")
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    adapter = load_model(str(model_dir))
    images = [Image.open(p).convert("RGB") for p in paths]
    plain = caption_images(adapter, images).texts
    code, stdout, err = run_cli(["caption", *map(str, paths), "--model", str(model_dir)], capsys)
    assert (code, err) == (0, "")
    assert stdout.splitlines() == [f"{p}: {c}" for p, c in zip(paths, plain)]

    suppressed = caption_images(adapter, images, as_neuron_set([(2, 5), (1, 7), (2, 11)])).texts
    code, stdout, err = run_cli(["caption", *map(str, paths), "--warehouse", str(full), "--concept", "circle"],
                                capsys)
    assert code == 0, err
    assert stdout.splitlines() == ["suppressed: circle (two_stage, 3 neurons)"] + [
        line for p, c, s in zip(paths, plain, suppressed) for line in (str(p), f"  unmodified: {c}", f"  suppressed: {s}")]

    code, stdout, _ = run_cli(["caption", str(paths[0]), "--model", str(model_dir), "--neuron", "0:1"], capsys)
    expected = caption_images(adapter, images[:1], as_neuron_set([(0, 1)])).texts[0]
    assert code == 0 and stdout.splitlines()[1:] == [str(paths[0]), f"  unmodified: {plain[0]}",
                                                     f"  suppressed: {expected}"]
    code, _, err = run_cli(["caption", str(paths[0]), "--model", str(model_dir), "--neuron", "0:9999"], capsys)
    assert code == 2 and err.strip() == (f"kneuron: error: neuron 0:9999 is outside the model "
                                         f"({adapter.n_layers} layers x {adapter.d_ff} units)")
    code, _, err = run_cli(["caption", str(paths[0]), "--neuron", "0:1", "--set-id", "x"], capsys)
    assert code == 2 and err.strip() == "kneuron: error: give either --neuron or --set-id, not both"
    code, _, err = run_cli(["caption", str(tmp_path / "missing.png"), "--model", str(model_dir)], capsys)
    assert code == 2 and "image file not found" in err and len(err.strip().splitlines()) == 1


def test_cli_report(bare, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "rep"
    code, stdout, err = run_cli(["report", "--warehouse", str(bare), "--out", str(out), "--images", "0",
                                 "--contrast-images", "2", "--max-concepts", "1"], capsys)
    assert code == 0, err
    assert f"report: {out / 'report.html'}" in stdout and "heatmap contrast (two_stage, 2 images)" in stdout
    assert "heatmap contrast (random control, 2 images)" in stdout
    code, _, err = run_cli(["report", "--warehouse", str(bare), "--run", "nope", "--out", str(out)], capsys)
    assert code == 2 and err.startswith("kneuron: error: unknown run 'nope'")
