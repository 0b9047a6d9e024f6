"""Every option of an ingest run, as one dataclass (the CLI builds one), and its checks."""
from __future__ import annotations

from dataclasses import dataclass

from kneuron.engine.errors import KneuronError
from kneuron.engine.inpaint import INPAINTERS
from kneuron.engine.models import DEFAULT_MODEL

#: IngestConfig fields that do not describe the run (where it is written, how it is shown)
NOT_IN_RUN_CONFIG = ("warehouse", "run_id", "progress", "save_inpainted", "retry_skipped")

POSITIONS = ("image", "prompt", "target")


@dataclass
class IngestConfig:
    """Every option of an ingest run (the CLI builds one).

    coco_root: COCO-layout folder (``annotations/instances_<split>.json`` + ``<split>/``); None = the embedded
        world at `default_world_path()`, generated there if missing.
    concepts: category names; empty = every category with >= ``min_images`` images (and a word the model's
        tokenizer knows). min_area: smallest instance area (px) for an image to count as showing the concept.
    images_per_concept: identification images recorded per concept (the lowest ids of the identification
        set); None = all. ident_fraction / seed: the identification/evaluation split.
    model / device / dtype: `load_model` arguments (``device="auto"``: CUDA when available; ``dtype="auto"``:
        the checkpoint's). batch_size: pairs per model batch (= per warehouse batch), or ``auto`` (fit the free
        GPU memory: `kneuron.engine.runtime.memory`).
    positions: P = ``image`` tokens, every ``prompt`` position, or the ``target`` position (the one that predicts
        the concept token, per image); top_k: units per (layer, position) in
        ``token_stats``.
    inpainter: ``telea`` | ``ns`` | ``sd``; margin_px: dilation of the mask; inpaint_radius: OpenCV radius;
        sd_model / sd_seed / sd_steps: the diffusers pipeline. save_inpainted: folder to save the inpainted
        images in (``<folder>/<concept>/<image_id>.png``), None = do not save.
    warehouse: warehouse folder (None: `$KNEURON_WAREHOUSE` or ``./kneuron-warehouse``); run_id: override the
        derived run id; progress: log a progress line at least every 30 s.
    retry_skipped: on resume, record again the pairs stored as ``skipped`` (e.g. an image that was missing).
    """

    coco_root: str | None = None
    split: str = "test"
    concepts: tuple[str, ...] = ()
    min_images: int = 8
    min_area: float = 0.0
    images_per_concept: int | None = 24
    ident_fraction: float = 0.5
    seed: int = 0
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | str = 8
    positions: str = "image"
    top_k: int = 16
    inpainter: str = "telea"
    margin_px: float = 2.0
    inpaint_radius: float = 5.0
    sd_model: str | None = None
    sd_seed: int = 0
    sd_steps: int = 25
    save_inpainted: str | None = None
    warehouse: str | None = None
    run_id: str | None = None
    progress: bool = True
    retry_skipped: bool = True

    def validate(self) -> None:
        """Raise `KneuronError` naming the first option with an impossible value."""
        checks = [
            (self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1),
             f"--batch-size must be a number >= 1 or auto, got {self.batch_size!r}"),
            (1 <= self.top_k <= 127, f"top-k must be in 1..127, got {self.top_k}"),
            (self.positions in POSITIONS, f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"),
            (self.images_per_concept is None or self.images_per_concept >= 1,
             f"images per concept must be >= 1 (or all), got {self.images_per_concept}"),
            (self.min_images >= 1, f"min images must be >= 1, got {self.min_images}"),
            (self.min_area >= 0, f"min area must be >= 0, got {self.min_area}"),
            (0.0 < self.ident_fraction <= 1.0, f"ident fraction must be in (0, 1], got {self.ident_fraction}"),
            (self.margin_px >= 0, f"inpainting margin must be >= 0 px, got {self.margin_px}"),
            (self.inpainter in INPAINTERS, f"unknown inpainter {self.inpainter!r}; known: {', '.join(INPAINTERS)}"),
            (self.inpainter != "sd" or bool(self.sd_model),
             "the sd inpainter needs --sd-model (a local diffusers inpainting folder or hub id)"),
        ]
        for ok, message in checks:
            if not ok:
                raise KneuronError(message)
