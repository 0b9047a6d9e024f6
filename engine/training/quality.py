"""Caption-quality check of a model on a COCO-format world split.

1. Object mentions: greedy captions of every image; per category, precision and recall of "the caption names
   the category" against the instance annotations.
2. Object removal: for every image and every object in it, inpaint that object's mask (dilated) and caption
   again; the removed category should disappear while the image's other categories stay named.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.eval.mentions import mentions
from kneuron.engine.inpaint import dilate, get_inpainter
from kneuron.engine.interventions.caption import caption_images
from kneuron.engine.models.base import VLMAdapter


@dataclass
class CategoryQuality:
    """Counts for one category over (image, category) pairs."""

    true_pos: int = 0
    false_pos: int = 0
    false_neg: int = 0
    removed: int = 0
    removal_cases: int = 0

    @property
    def precision(self) -> float:
        return self.true_pos / max(1, self.true_pos + self.false_pos)

    @property
    def recall(self) -> float:
        return self.true_pos / max(1, self.true_pos + self.false_neg)


@dataclass
class QualityReport:
    """Per-category table plus the overall numbers the acceptance criteria use."""

    categories: dict[str, CategoryQuality] = field(default_factory=dict)
    others_kept: int = 0
    others_total: int = 0
    n_images: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def _total(self, attr: str) -> int:
        return sum(getattr(c, attr) for c in self.categories.values())

    @property
    def precision(self) -> float:
        tp = self._total("true_pos")
        return tp / max(1, tp + self._total("false_pos"))

    @property
    def recall(self) -> float:
        tp = self._total("true_pos")
        return tp / max(1, tp + self._total("false_neg"))

    @property
    def removal_rate(self) -> float:
        return self._total("removed") / max(1, self._total("removal_cases"))

    @property
    def retention_rate(self) -> float:
        return self.others_kept / max(1, self.others_total)

    def table(self) -> str:
        """Markdown table: category, precision, recall, removal rate."""
        lines = ["| category | precision | recall | removed after inpainting |", "|---|---|---|---|"]
        for name, c in self.categories.items():
            lines.append(f"| {name} | {c.precision:.3f} | {c.recall:.3f} | "
                         f"{c.removed / max(1, c.removal_cases):.3f} ({c.removal_cases}) |")
        lines.append(f"| **all** | **{self.precision:.3f}** | **{self.recall:.3f}** | **{self.removal_rate:.3f}** |")
        lines.append(f"\nOther objects still named after one object is inpainted: {self.retention_rate:.3f} "
                     f"({self.others_kept}/{self.others_total}); images: {self.n_images}")
        return "\n".join(lines)


def check_quality(adapter: VLMAdapter, world: Path, split: str = "test", limit: int | None = None,
                  inpainter: str = "telea", margin_px: float = 2.0, batch_size: int = 32,
                  progress: Callable[[int], None] | None = None) -> QualityReport:
    """Caption ``split`` of ``world`` (first ``limit`` images) plain and with each object inpainted."""
    data = CocoDataset(world, split)
    ids = data.image_ids()[:limit] if limit else data.image_ids()
    names = list(data.categories.values())
    report = QualityReport(categories={n: CategoryQuality() for n in names}, n_images=len(ids))
    images = [data.load_image(i) for i in ids]
    captions = caption_images(adapter, images, batch_size=batch_size).texts
    report.examples = list(zip(ids[:20], captions[:20], strict=True))
    fill = get_inpainter(inpainter)
    removal_images: list[Image.Image] = []
    removal_cases: list[tuple[str, list[str]]] = []
    for image_id, image, caption in zip(ids, images, captions, strict=True):
        present = set(data.concepts_in(image_id))
        for name in names:
            said = mentions(caption, name)
            stats = report.categories[name]
            stats.true_pos += int(said and name in present)
            stats.false_pos += int(said and name not in present)
            stats.false_neg += int(not said and name in present)
        for name in sorted(present):
            mask = dilate(data.concept_mask(image_id, name), margin_px)
            removal_images.append(Image.fromarray(fill.inpaint(np.asarray(image), mask)))
            removal_cases.append((name, sorted(present - {name})))
        if progress:
            progress(1)
    after = caption_images(adapter, removal_images, batch_size=batch_size).texts
    for (name, others), caption in zip(removal_cases, after, strict=True):
        stats = report.categories[name]
        stats.removal_cases += 1
        stats.removed += int(not mentions(caption, name))
        report.others_total += len(others)
        report.others_kept += sum(mentions(caption, o) for o in others)
    return report
