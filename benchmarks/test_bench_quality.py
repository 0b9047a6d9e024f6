"""Caption quality of the bundled tiny models on the embedded world's test split (`kneuron check` as a benchmark).

For each bundled model: object-mention precision and recall, the share of inpainted objects that leave the
caption, and the share of the other objects that stay named — held to the bars of the embedded default
(precision and recall >= 0.9, removal >= 0.8, others kept >= 0.85). Timing: the whole check (captions of the
images, then of one inpainted copy per object) against one captioning pass over the same images measured in
the same run; the ratio goes to ``benchmark.extra_info`` with the quality numbers.

Environment: ``KNEURON_BENCH_QUALITY_IMAGES`` (test images, 300 = the whole split).

    pytest benchmarks/test_bench_quality.py --benchmark-enable -s
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.models import BUNDLED, load_model
from kneuron.engine.training.quality import check_quality

N_IMAGES = int(os.environ.get("KNEURON_BENCH_QUALITY_IMAGES") or 300)
BARS = {"precision": 0.9, "recall": 0.9, "removal_rate": 0.8, "retention_rate": 0.85}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the embedded default's test split alone (images are seeded per split and index: same as the full world)
    config = replace(WorldConfig(), n_train=0, n_val=0, n_test=N_IMAGES)
    return generate_world(tmp_path_factory.mktemp("world") / "w", config)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_caption_quality(benchmark, world: Path, name: str) -> None:  # noqa: ANN001
    adapter = load_model(name)
    data = CocoDataset(world, "test")
    images = [data.load_image(i) for i in data.image_ids()]
    started = time.perf_counter()
    caption_images(adapter, images, batch_size=32)
    reference = time.perf_counter() - started

    report = benchmark.pedantic(check_quality, args=(adapter, world), kwargs={"split": "test"}, rounds=1)
    numbers = {key: getattr(report, key) for key in BARS}
    benchmark.extra_info.update({key: round(value, 4) for key, value in numbers.items()})
    benchmark.extra_info["check_over_one_captioning_pass"] = round(benchmark.stats.stats.median / reference, 2)
    print(f"\n{name}\n{report.table()}")
    failing = {key: round(value, 3) for key, value in numbers.items() if value < BARS[key]}
    assert not failing, f"{name} below the bar: {failing}"
