"""MiniGPT-4 model, prompt, preprocessing, captioning and the model-folder loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kneuron.engine.errors import KneuronError
from kneuron.engine.models import load_model
from kneuron.engine.models.minigpt4_adapter import save_minigpt4
from kneuron.engine.models.preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocessor
from kneuron.engine.models.prompts import LLAMA2, VICUNA0
from tests.helpers.tiny_models import random_images, tiny_minigpt4


@pytest.mark.parametrize("variant,n_tokens", [("qformer", 4), ("patch", 4)])
def test_image_tokens_sit_between_prompt_segments(variant: str, n_tokens: int) -> None:
    adapter = tiny_minigpt4(variant)
    before, after = adapter.prompt_segments()
    prepared = adapter.prepare(random_images(2), targets=[[5, 6, 7], [8]])
    assert prepared.image_positions.tolist() == list(range(len(before), len(before) + n_tokens))
    assert prepared.prompt_length == len(before) + n_tokens + len(after)
    logits = adapter.logits(adapter.model(*prepared.args))
    assert logits.shape == (2, prepared.prompt_length + 3, len(adapter.tokenizer))
    # the image tokens are the projected image embeddings, spliced in place
    embeds = adapter.model.embed(*prepared.args)
    image = adapter.model.encode_img(prepared.args[0])
    assert torch.equal(embeds[:, prepared.image_positions], image)


def test_bos_only_on_first_segment_and_official_template() -> None:
    adapter = tiny_minigpt4("qformer")
    before, after = adapter.prompt_segments()
    bos = adapter.tokenizer.bos_token_id
    assert before[0].item() == bos and (before == bos).sum() == 1 and (after == bos).sum() == 0
    text = adapter.tokenizer.decode(after.tolist())
    assert text.startswith("</ Img >") and text.endswith("### Assistant :")
    assert VICUNA0.render("Describe this image in detail.").endswith(
        "###Human: <Img><ImageHere></Img> Describe this image in detail.###Assistant: ")
    assert LLAMA2.segments("Hi")[1] == "</Img> Hi [/INST] "


def test_clean_answer_applies_official_stop_rule() -> None:
    assert VICUNA0.clean_answer(" a red circle###Human: more") == "a red circle"
    assert VICUNA0.clean_answer("Assistant: a dog") == "a dog"
    assert LLAMA2.clean_answer("a dog</s>junk") == "a dog"


def test_preprocessing_is_bicubic_resize_and_clip_normalisation() -> None:
    image = random_images(1, size=50)[0]
    pixels = ImagePreprocessor(32)([image])
    expected = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    expected = (expected - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    assert pixels.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    gray = ImagePreprocessor(32)([image.convert("L")])
    assert gray.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("variant", ["qformer", "patch"])
def test_generate_returns_new_tokens_and_stops(variant: str) -> None:
    adapter = tiny_minigpt4(variant)
    prepared = adapter.prepare(random_images(3))
    args, kwargs = adapter.generate_call(prepared)
    assert kwargs["do_sample"] is False and kwargs["num_beams"] == 1
    assert set(kwargs["eos_token_id"]) == set(adapter.stop_token_ids)
    new = adapter.model.generate(*args, **kwargs)
    assert new.shape[0] == 3 and new.shape[1] <= adapter.max_new_tokens
    # greedy continuation equals the argmax of a teacher-forced forward on the generated prefix
    row = adapter.caption_ids(new[0].tolist())
    if row:
        logits = adapter.logits(adapter.model(*adapter.prepare(args[0][:1], targets=[row]).args))
        greedy = logits[0, prepared.prompt_length - 1: prepared.prompt_length - 1 + len(row)].argmax(-1)
        assert greedy.tolist() == row


def test_stop_tokens_follow_the_template() -> None:
    vicuna = tiny_minigpt4("qformer")
    hash_id = vicuna.tokenizer.convert_tokens_to_ids("###")
    assert vicuna.stop_token_ids == [vicuna.tokenizer.eos_token_id, hash_id]
    assert vicuna.caption_ids([7, 8, hash_id, 9]) == [7, 8]
    assert tiny_minigpt4("patch").stop_token_ids == [vicuna.tokenizer.eos_token_id]


@pytest.mark.parametrize("variant", ["qformer", "patch"])
def test_save_and_load_round_trip(tmp_path, variant: str) -> None:
    adapter = tiny_minigpt4(variant)
    save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    prepared = adapter.prepare(random_images(2), targets=[[5], [6]])
    torch.testing.assert_close(adapter.model(*prepared.args).logits, loaded.model(*prepared.args).logits)
    assert loaded.n_layers == 3 and loaded.d_ff == 96 and not any(p.requires_grad for p in loaded.model.parameters())


def test_loader_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(KneuronError, match="model not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KneuronError, match="not a model folder"):
        load_model(str(tmp_path / "empty"))
    adapter = tiny_minigpt4("qformer")
    folder = save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(KneuronError, match="corrupt weights"):
        load_model(str(folder))
    other = tiny_minigpt4("patch")
    save_minigpt4(other.model, other.tokenizer, other.spec, tmp_path / "p")
    spec = json.loads((tmp_path / "p" / "kneuron_model.json").read_text())
    spec["architecture"] = json.loads((folder / "kneuron_model.json").read_text())["architecture"]
    (tmp_path / "p" / "kneuron_model.json").write_text(json.dumps(spec))
    with pytest.raises(KneuronError, match=r"incompatible checkpoint .*missing: .*qformer"):
        load_model(str(tmp_path / "p"))


def test_fingerprint_follows_the_weights(tmp_path) -> None:
    from kneuron.engine.models.fingerprint import model_fingerprint

    adapter = tiny_minigpt4("qformer")
    first = model_fingerprint(adapter)
    assert len(first) == 64 and first == model_fingerprint(tiny_minigpt4("qformer"))  # same seed, same weights
    save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path / "m")
    assert model_fingerprint(load_model(str(tmp_path / "m"))) == first  # survives a save / load round trip
    assert model_fingerprint(tiny_minigpt4("qformer", seed=1)) != first
    with torch.no_grad():
        adapter.model.llama_proj.weight[0, 0] += 1.0  # one changed value (the tensor is fully sampled)
    assert model_fingerprint(adapter) != first


def _mlp_adapter(variant: str = "patch"):  # noqa: ANN202
    from dataclasses import replace

    from kneuron.engine.models.minigpt4 import MiniGPT4
    from kneuron.engine.models.minigpt4_adapter import MiniGPT4Adapter

    base = tiny_minigpt4(variant)
    torch.manual_seed(1)
    config = replace(base.spec.architecture, projection="mlp2x_gelu")
    model = MiniGPT4(config).eval()
    return MiniGPT4Adapter(model, base.tokenizer, replace(base.spec, architecture=config), name="tiny-mlp")


@pytest.mark.parametrize("variant", ["qformer", "patch"])
def test_mlp2x_gelu_projection_round_trips(tmp_path, variant: str) -> None:
    adapter = _mlp_adapter(variant)
    proj = adapter.model.llama_proj
    assert isinstance(proj, torch.nn.Sequential) and isinstance(proj[1], torch.nn.GELU)
    features = adapter.model.image_features(adapter.pixel_values(random_images(2)))
    expected = proj[2](torch.nn.functional.gelu(proj[0](features)))
    torch.testing.assert_close(adapter.model.encode_img(adapter.pixel_values(random_images(2))), expected)
    save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "kneuron_model.json").read_text())["architecture"]["projection"] == "mlp2x_gelu"
    loaded = load_model(str(tmp_path / "m"))
    prepared = adapter.prepare(random_images(2), targets=[[5], [6]])
    torch.testing.assert_close(adapter.model(*prepared.args).logits, loaded.model(*prepared.args).logits)


def test_projection_kind_is_checked(tmp_path) -> None:
    from kneuron.engine.models.minigpt4 import build_projection

    with pytest.raises(ValueError, match="unknown projection 'conv'"):
        build_projection("conv", 4, 4)
    adapter = tiny_minigpt4("patch")
    save_minigpt4(adapter.model, adapter.tokenizer, adapter.spec, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "kneuron_model.json").read_text())
    assert spec["architecture"]["projection"] == "linear"
    spec["architecture"]["projection"] = "conv"
    (tmp_path / "m" / "kneuron_model.json").write_text(json.dumps(spec))
    with pytest.raises(KneuronError, match=r"^unknown projection 'conv' in .* \(known: linear, mlp2x_gelu\)$"):
        load_model(str(tmp_path / "m"))
