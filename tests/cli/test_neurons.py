"""`kneuron decode`, `heatmap` and `caption`: neurons from a run's sets (--concept, --set) or given (--neuron)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.signals.decode import decode_neurons
from kneuron.engine.signals.neurons import as_neuron_set
from tests.helpers.cli_runner import run_cli
from tests.helpers.report_fixtures import OLD_SET_ID, splits_of


def _config(root: Path) -> str:
    from kneuron import queries

    with queries.connect(root) as con:
        return con.execute("SELECT config_json FROM runs").fetchone()[0]


def test_cli_heatmap_from_the_run(report_full, tmp_path, capsys) -> None:  # noqa: ANN001
    image_id = splits_of(Path(json.loads(_config(report_full))["identity"]["dataset"]))["circle"][1][0]
    out = tmp_path / "h" / "circle.png"
    code, stdout, err = run_cli(["heatmap", "--warehouse", str(report_full), "--concept", "circle", "--image-id",
                                 str(image_id), "--out", str(out)], capsys)
    assert (code, err) == (0, "")
    assert f"wrote {out} (536x290): circle (two_stage, 3 neurons, set circle-two_stage) on image {image_id}" in stdout
    assert Image.open(out).size == (536, 290)  # two 64 px panels scaled to 256, labels and gaps
    code, stdout, err = run_cli(["heatmap", "--warehouse", str(report_full), "--concept", "circle", "--set", OLD_SET_ID,
                                 "--image-id", str(image_id), "--out", str(out)], capsys)
    assert (code, err) == (0, "")
    assert f"set {OLD_SET_ID} (circle, two_stage, 2 neurons) on image {image_id}" in stdout


def test_cli_heatmap_standalone_and_errors(report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "o.png"
    code, stdout, _ = run_cli(["heatmap", "--model", str(report_model_dir), "--neuron", "2:5", "--neuron", "0:1",
                               "--image", str(image), "--out", str(out)], capsys)
    assert code == 0 and "2 neuron(s)" in stdout
    assert Image.open(out).size == (round(70 * 256 / 50) * 2 + 24, 256 + 18 + 16)
    code, _, err = run_cli(["heatmap", "--model", str(report_model_dir), "--neuron", "2-5", "--image", str(image),
                            "--out", str(out)], capsys)
    assert code == 2 and err.strip() == "kneuron: error: bad neuron '2-5'; expected LAYER:UNIT, e.g. 12:3071"
    code, _, err = run_cli(["heatmap", "--model", str(report_model_dir), "--neuron", "2:5", "--image",
                            str(tmp_path / "missing.png"), "--out", str(out)], capsys)
    assert code == 2 and "image file not found" in err and len(err.strip().splitlines()) == 1


def test_cli_decode(report_full, report_model_dir, capsys) -> None:  # noqa: ANN001
    code, stdout, err = run_cli(["decode", "--warehouse", str(report_full), "--concept", "circle", "--k", "4"], capsys)
    assert code == 0, err
    from kneuron.engine.models import load_model

    adapter = load_model(str(report_model_dir))
    for decoded in decode_neurons(adapter, [(2, 5), (1, 7), (2, 11)], k=4):
        assert " ".join(repr(t) for t in decoded.tokens) in stdout
    assert ("circle (two_stage, 3 neurons, set circle-two_stage), run tiny-run: top 4 tokens without the final norm"
            in stdout)
    assert "concept-word hit rate:" in stdout
    code, stdout, _ = run_cli(["decode", "--model", str(report_model_dir), "--neuron", "1:3", "--final-norm"], capsys)
    assert code == 0 and "with the final norm" in stdout and "1:3" in stdout
    code, _, err = run_cli(["decode", "--warehouse", str(report_full), "--concept", "heart"], capsys)
    assert code == 2 and "no two_stage neuron set for concept 'heart' in run tiny-run" in err


@pytest.mark.parametrize("option", ["--set", "--set-id"])  # --set-id: the hidden old spelling still works
def test_cli_decode_a_set_by_id(report_full, option, capsys) -> None:  # noqa: ANN001
    code, stdout, err = run_cli(["decode", "--warehouse", str(report_full), option, OLD_SET_ID, "--k", "2"], capsys)
    assert code == 0, err
    assert stdout.startswith(f"set {OLD_SET_ID} (circle, two_stage, 2 neurons), run tiny-run: top 2 tokens")
    assert "0:1" in stdout and "0:2" in stdout and "2:5" not in stdout


def test_set_option_help_and_alias_conflict(report_full, capsys) -> None:  # noqa: ANN001
    for command in ("decode", "heatmap", "caption"):
        code, stdout, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and "--set SET_ID" in stdout and "--set-id" not in stdout
    code, _, err = run_cli(["decode", "--warehouse", str(report_full), "--set", "a", "--set-id", "b"], capsys)
    assert code == 2 and "--set and --set-id (its old spelling) name different sets" in err


def test_cli_caption(report_full, report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    from kneuron.engine.models import load_model

    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"c{seed}.png")
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    adapter = load_model(str(report_model_dir))
    images = [Image.open(p).convert("RGB") for p in paths]
    plain = caption_images(adapter, images).texts
    code, stdout, err = run_cli(["caption", *map(str, paths), "--model", str(report_model_dir)], capsys)
    assert (code, err) == (0, "")
    assert stdout.splitlines() == [f"{p}: {c}" for p, c in zip(paths, plain, strict=True)]

    suppressed = caption_images(adapter, images, as_neuron_set([(2, 5), (1, 7), (2, 11)])).texts
    code, stdout, err = run_cli(["caption", *map(str, paths), "--warehouse", str(report_full), "--concept", "circle"],
                                capsys)
    assert code == 0, err
    assert stdout.splitlines() == ["suppressed: circle (two_stage, 3 neurons, set circle-two_stage)"] + [
        line for p, c, s in zip(paths, plain, suppressed, strict=True)
        for line in (str(p), f"  unmodified: {c}", f"  suppressed: {s}")]

    code, stdout, _ = run_cli(["caption", str(paths[0]), "--model", str(report_model_dir), "--neuron", "0:1"], capsys)
    expected = caption_images(adapter, images[:1], as_neuron_set([(0, 1)])).texts[0]
    assert code == 0 and stdout.splitlines()[1:] == [str(paths[0]), f"  unmodified: {plain[0]}",
                                                     f"  suppressed: {expected}"]
    code, _, err = run_cli(["caption", str(paths[0]), "--model", str(report_model_dir), "--neuron", "0:9999"], capsys)
    assert code == 2 and err.strip() == (f"kneuron: error: neuron 0:9999 is outside the model "
                                         f"({adapter.n_layers} layers x {adapter.d_ff} units)")
    code, _, err = run_cli(["caption", str(paths[0]), "--neuron", "0:1", "--set", "x"], capsys)
    assert code == 2 and err.strip() == "kneuron: error: give either --neuron or --set, not both"
    code, _, err = run_cli(["caption", str(tmp_path / "missing.png"), "--model", str(report_model_dir)], capsys)
    assert code == 2 and "image file not found" in err and len(err.strip().splitlines()) == 1


def test_cli_caption_mean_ablation(report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    from kneuron.engine.interventions.ablation import Ablation, record_reference
    from kneuron.engine.interventions.multiset import caption_under_sets
    from kneuron.engine.models import load_model

    paths = []
    for seed in range(4):
        paths.append(tmp_path / f"m{seed}.png")
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    adapter = load_model(str(report_model_dir))
    images = [Image.open(p).convert("RGB") for p in paths]
    reference = record_reference(adapter, images[2:])
    want = caption_under_sets(adapter, images[:2], [as_neuron_set([(0, 1), (1, 2)])],
                              Ablation("mean", reference))[0].texts
    code, stdout, err = run_cli(["caption", *map(str, paths[:2]), "--model", str(report_model_dir), "--neuron", "0:1",
                                 "--neuron", "1:2", "--ablation", "mean", "--reference", str(paths[2]),
                                 "--reference", str(paths[3])], capsys)
    assert code == 0, err
    assert stdout.splitlines()[0] == "suppressed: 2 neuron(s) (mean ablation)"
    assert [line.removeprefix("  suppressed: ") for line in stdout.splitlines() if "suppressed: " in line][1:] == want
    code, _, err = run_cli(["caption", str(paths[0]), "--model", str(report_model_dir), "--neuron", "0:1",
                            "--ablation", "resample"], capsys)
    assert code == 2 and err.strip() == ("kneuron: error: --ablation resample needs --reference images (their "
                                         "activations replace the units')")
