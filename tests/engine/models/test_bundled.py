"""The bundled tiny models load by name and describe the embedded world; training reproduces the pipeline."""
from __future__ import annotations

from dataclasses import replace

import pytest

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.eval.mentions import mentions
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.models import BUNDLED, load_model
from kneuron.engine.training.train import TRAIN_WORLD, TrainConfig, train_tiny_minigpt4


@pytest.fixture(scope="module")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    # the first 16 images of the embedded world's test split (per-image seeds: independent of n_train)
    config = replace(TRAIN_WORLD, n_train=0, n_val=0, n_test=16)
    return CocoDataset(generate_world(tmp_path_factory.mktemp("world") / "w", config), "test")


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_names_the_objects(name: str, test_images: CocoDataset) -> None:
    adapter = load_model(name)
    ids = test_images.image_ids()
    captions = caption_images(adapter, [test_images.load_image(i) for i in ids]).texts
    tp = fp = fn = 0
    for image_id, caption in zip(ids, captions, strict=True):
        present = set(test_images.concepts_in(image_id))
        for concept in test_images.categories.values():
            said = mentions(caption, concept)
            tp += said and concept in present
            fp += said and concept not in present
            fn += (not said) and concept in present
    assert tp / (tp + fp) >= 0.8 and tp / (tp + fn) >= 0.8, list(zip(ids, captions, strict=True))


def test_training_runs_and_the_folder_loads(tmp_path) -> None:
    world = generate_world(tmp_path / "w", WorldConfig(seed=2, image_size=64, n_train=12, n_val=0, n_test=0))
    cfg = TrainConfig(variant="patch", steps=25, batch_size=8, warmup_steps=5, threads=1, vision_width=32,
                      qformer_width=32, d_model=32, d_ff=64, n_layers=2,
                      vision_pretrain_steps=5, vision_lr_scale=0.5)
    logs: list[str] = []
    train_tiny_minigpt4(world, tmp_path / "m", cfg, log=logs.append)
    caption_steps = [line for line in logs if line.startswith("step")]
    vision_steps = [line for line in logs if line.startswith("vision step")]
    first, last = (float(line.split("loss")[1].split()[0]) for line in (caption_steps[0], caption_steps[-1]))
    assert last < first and len(vision_steps) == 2  # steps 0 and 4 of the ViT pre-training
    adapter = load_model(str(tmp_path / "m"))
    assert adapter.n_layers == 2 and adapter.d_ff == 64 and adapter.n_image_tokens == 1
