"""COCO-format data: the loader for MS COCO 2017 / any COCO-layout folder, and the embedded shapes world."""
from kneuron.engine.data.coco import CocoDataset, split_ident_eval, to_rgb
from kneuron.engine.data.world import (
    BACKGROUNDS,
    CATEGORIES,
    COLORS,
    SIZES,
    SPLITS,
    WorldConfig,
    caption_vocabulary,
    check_world_target,
    ensure_world,
    generate_world,
    read_world_manifest,
    world_config_of,
)

__all__ = [
    "BACKGROUNDS", "CATEGORIES", "COLORS", "SIZES", "SPLITS", "CocoDataset", "WorldConfig",
    "caption_vocabulary", "check_world_target", "ensure_world", "generate_world", "read_world_manifest",
    "split_ident_eval", "to_rgb",
    "world_config_of",
]
