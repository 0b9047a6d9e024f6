"""Training helpers: the auxiliary-loss augmentation keeps labels on their patches; the bundled recipes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.engine.training.train import BUNDLED_RECIPES, TrainConfig, augment_for_aux

GRID, PATCH = 4, 8


def _labelled_images(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[batch, 32, 32, 3]`` whose every patch is filled with 10 * its label (all channels), except a
    per-image colour tag in the top-left pixel; labels ``[batch, 16]``."""
    labels = torch.randint(0, 9, (batch, GRID * GRID), generator=torch.Generator().manual_seed(0))
    images = (labels.view(batch, GRID, 1, GRID, 1) * 10).expand(batch, GRID, PATCH, GRID, PATCH)
    images = images.reshape(batch, GRID * PATCH, GRID * PATCH, 1).expand(-1, -1, -1, 3).clone().to(torch.uint8)
    images[:, 0, 0] = torch.tensor([200, 150, 100], dtype=torch.uint8)
    return images, labels


def test_augmentation_moves_labels_with_their_patches() -> None:
    images, labels = _labelled_images(64)
    out_images, out_labels = augment_for_aux(images, labels, np.random.default_rng(1))
    patch_values = out_images[..., 0].reshape(64, GRID, PATCH, GRID, PATCH)[:, :, -1, :, -1]  # a pixel per patch
    torch.testing.assert_close(patch_values.reshape(64, -1).long(), out_labels * 10)
    flipped = (out_labels.view(64, GRID, GRID) != labels.view(64, GRID, GRID)).any(dim=(1, 2))
    expected_flip = (out_labels.view(64, GRID, GRID) == labels.view(64, GRID, GRID).flip(2)).all(dim=(1, 2))
    assert bool((~flipped | expected_flip).all())  # a changed label grid is exactly the mirrored one
    assert 16 < int(flipped.sum()) < 48  # about half of the images are flipped
    # the colour tag lands in the top-left or top-right corner with its channels permuted
    tags = torch.where(flipped.view(-1, 1), out_images[:, 0, -1], out_images[:, 0, 0])
    assert all(sorted(t.tolist()) == [100, 150, 200] for t in tags)
    assert len({tuple(t.tolist()) for t in tags}) > 3  # several channel orders occur


def test_augmentation_is_deterministic_for_a_seed() -> None:
    images, labels = _labelled_images(8)
    first = augment_for_aux(images, labels, np.random.default_rng(5))
    second = augment_for_aux(images, labels, np.random.default_rng(5))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("variant", sorted(BUNDLED_RECIPES))
def test_bundled_recipe_applies_overrides(variant: str) -> None:
    cfg = TrainConfig.bundled(variant, seed=3)
    assert cfg.variant == variant and cfg.seed == 3
    for key, value in BUNDLED_RECIPES[variant].items():
        assert getattr(cfg, key) == value
    assert TrainConfig.bundled(variant, steps=7).steps == 7


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_vision_learning_rate_scale_and_freezing(scale: float) -> None:
    from kneuron.engine.models.minigpt4 import MiniGPT4
    from kneuron.engine.models.tiny import tiny_config
    from kneuron.engine.training.train import _param_groups

    model = MiniGPT4(tiny_config("patch", vocab_size=20, image_size=32, vision_width=16, qformer_width=16,
                                 d_model=16, d_ff=32, n_layers=1))
    head = torch.nn.Linear(16, 9)
    if scale == 0:
        model.vision_model.requires_grad_(False)
    groups = _param_groups(model, head, TrainConfig(vision_lr_scale=scale))
    vision = {id(p) for p in model.vision_model.parameters()}
    grouped = [(id(p), g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]]
    assert len({pid for pid, _, _ in grouped}) == len(grouped)  # no parameter twice
    trainable = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    assert {pid for pid, _, _ in grouped} == {id(p) for p in trainable}
    assert all(lr_scale == (scale if pid in vision else 1.0) for pid, lr_scale, _ in grouped)
    assert any(pid in vision for pid, _, _ in grouped) == (scale > 0)
    decayed = {pid for pid, _, wd in grouped if wd > 0}
    assert id(head.weight) in decayed and id(head.bias) not in decayed
    assert id(model.language_model.get_input_embeddings().weight) not in decayed


def test_unknown_variant_is_one_line_before_reading_data(tmp_path) -> None:  # noqa: ANN001
    from kneuron.engine.errors import KneuronError
    from kneuron.engine.training.train import train_tiny_minigpt4

    with pytest.raises(KneuronError, match=r"^unknown MiniGPT-4 variant 'vicuna'; use qformer or patch$"):
        train_tiny_minigpt4(tmp_path / "no-world", tmp_path / "out", TrainConfig(variant="vicuna"), log=lambda _: None)
    assert not (tmp_path / "out").exists()
    assert torch.get_num_threads() == 1  # refused before the run touched torch's settings
