"""Inpainting: mask helpers, OpenCV Telea / Navier-Stokes, and a tiny diffusers pipeline loaded by path."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from kneuron.engine.errors import KneuronError  # noqa: E402
from kneuron.engine.inpaint import get_inpainter  # noqa: E402
from kneuron.engine.inpaint.masks import dilate, removal_mask, union  # noqa: E402

BACKGROUND = (90, 140, 200)


def flat_scene(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A flat background with a red disk and the disk's mask: uint8 [size, size, 3], bool [size, size]."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    cv2.circle(image, (size // 2, size // 2), size // 6, (220, 30, 30), thickness=-1)
    mask = np.all(image != np.array(BACKGROUND, dtype=np.uint8), axis=-1)
    return image, mask


# ----- masks ---------------------------------------------------------------------------------------------
def test_dilate_grows_by_the_margin_in_euclidean_distance() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[15:20, 10:30] = True
    mask[30, 40] = True
    distance = ndimage.distance_transform_edt(~mask)  # independent reference
    for margin in (1, 2.5, 4):
        grown = dilate(mask, margin)
        assert grown.dtype == bool and grown.shape == mask.shape
        np.testing.assert_array_equal(grown, distance <= margin)
        assert grown[mask].all()
    four = dilate(mask, 4)
    assert four[11, 20] and not four[10, 20]  # exactly 4 px above the top edge is in, 5 px is out
    np.testing.assert_array_equal(dilate(mask, 0), mask)
    assert not dilate(np.zeros((5, 5), dtype=bool), 3).any()
    with pytest.raises(KneuronError, match="margin must be >= 0"):
        dilate(mask, -1)


def test_union_and_removal_mask() -> None:
    a = np.zeros((8, 8), dtype=bool)
    a[1, 1] = True
    b = np.zeros((8, 8), dtype=np.uint8)
    b[6, 6] = 1
    both = union([a, b])
    assert both.dtype == bool and both.sum() == 2 and both[1, 1] and both[6, 6]
    assert not union([], shape=(8, 8)).any()
    with pytest.raises(KneuronError, match="mask 1 has shape"):
        union([a, np.zeros((4, 4), dtype=bool)])
    np.testing.assert_array_equal(removal_mask([a, b], (8, 8), 1.0), dilate(both, 1.0))


# ----- OpenCV --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["telea", "ns"])
def test_opencv_removes_the_object_and_keeps_the_rest(name: str) -> None:
    image, mask = flat_scene()
    region = dilate(mask, 3)
    inpainter = get_inpainter(name, radius=4)
    out = inpainter.inpaint(image, region)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[~region], image[~region])  # outside the dilated mask: untouched
    assert np.any(out[region] != image[region])  # inside: changed
    before = np.abs(image[mask].astype(int) - np.array(BACKGROUND))
    after = np.abs(out[mask].astype(int) - np.array(BACKGROUND))
    assert before.max(axis=-1).min() >= 100  # the object was far from the background colour
    assert after.max() <= 6 and after.mean() <= 2, f"{name}: object not removed ({after.max()}, {after.mean()})"
    assert np.array_equal(out, inpainter.inpaint(image, region))  # deterministic
    np.testing.assert_array_equal(out, cv2.inpaint(image, region.astype(np.uint8) * 255, 4, {
        "telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[name]))
    assert inpainter.config() == {"name": name, "radius": 4.0, "opencv": cv2.__version__}


def test_default_inpainter_is_telea_and_unknown_names_fail() -> None:
    assert get_inpainter().name == "telea"
    with pytest.raises(KneuronError, match="unknown inpainter 'lama'"):
        get_inpainter("lama")
    with pytest.raises(KneuronError, match="bad options for inpainter 'telea'"):
        get_inpainter("telea", radus=3)
    with pytest.raises(KneuronError, match="radius must be > 0"):
        get_inpainter("ns", radius=0)
    with pytest.raises(KneuronError, match="needs model="):
        get_inpainter("sd")


def test_input_validation() -> None:
    image, mask = flat_scene(32)
    inpainter = get_inpainter("telea")
    with pytest.raises(KneuronError, match="empty mask"):
        inpainter.inpaint(image, np.zeros(mask.shape, dtype=bool))
    with pytest.raises(KneuronError, match="got dtype float32"):
        inpainter.inpaint(image.astype(np.float32) / 255, mask)
    with pytest.raises(KneuronError, match=r"values in \[90, 300\]; expected 0..255"):
        inpainter.inpaint(np.where(mask[..., None], 300, image.astype(np.int32)), mask)
    with pytest.raises(KneuronError, match=r"shape \[H, W, 3\]"):
        inpainter.inpaint(image[..., 0], mask)
    with pytest.raises(KneuronError, match="does not match image shape"):
        inpainter.inpaint(image, mask[1:])
    # integer images in range and integer masks are converted
    converted = inpainter.inpaint(image.astype(np.int64), mask.astype(np.uint8))
    np.testing.assert_array_equal(converted, inpainter.inpaint(image, mask))


# ----- diffusers -----------------------------------------------------------------------------------------
def save_tiny_inpainting_pipeline(folder: Path) -> Path:
    """Random-weight Stable Diffusion inpainting pipeline built from configs (no download), saved to folder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    words = ["<pad>", "<unk>", "<s>", "</s>", "a", "photo", "of", "empty", "background", "room"]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>", model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(words), max_position_embeddings=77))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionInpaintPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory):
    return save_tiny_inpainting_pipeline(tmp_path_factory.mktemp("tiny-sd-inpaint"))


def test_diffusion_inpainter_loads_by_path_and_is_seeded(tiny_pipeline_dir: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:44, 16:40] = True
    inpainter = get_inpainter("sd", model=str(tiny_pipeline_dir), steps=2, seed=0)
    out = inpainter.inpaint(image, mask)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert np.any(out[mask] != image[mask])
    np.testing.assert_array_equal(out, inpainter.inpaint(image, mask))  # same seed, same output
    other = get_inpainter("sd", model=str(tiny_pipeline_dir), steps=2, seed=1).inpaint(image, mask)
    assert np.any(other[mask] != out[mask])
    np.testing.assert_array_equal(other[~mask], image[~mask])
    config = inpainter.config()
    assert config["model"] == tiny_pipeline_dir.name and config["seed"] == 0 and config["steps"] == 2
    assert config["prompt"] == "background"


def test_diffusion_inpainter_resizes_to_multiples_of_8(tiny_pipeline_dir: Path) -> None:
    image = np.full((50, 61, 3), 128, dtype=np.uint8)
    mask = np.zeros((50, 61), dtype=bool)
    mask[10:30, 20:45] = True
    out = get_inpainter("sd", model=str(tiny_pipeline_dir), steps=1, seed=0, guidance_scale=1.0).inpaint(image, mask)
    assert out.shape == (50, 61, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_diffusion_inpainter_missing_folder(tmp_path: Path) -> None:
    inpainter = get_inpainter("sd", model=str(tmp_path / "no-such-pipeline"), steps=1)
    image, mask = flat_scene(16)
    with pytest.raises(KneuronError, match="cannot load inpainting pipeline"):
        inpainter.inpaint(image, mask)


def test_sd_inpainter_without_diffusers_says_how_to_install(monkeypatch) -> None:
    import importlib.metadata

    from kneuron.engine.inpaint import diffusion

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "diffusers":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(KneuronError, match=r"^the sd inpainter needs diffusers: pip install 'kneuron\[sd\]'$"):
        diffusion._diffusers_version()
