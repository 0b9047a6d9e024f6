"""The embedded shapes world: determinism, COCO validity, masks, pixels, captions, CLI."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from kneuron.engine.data.shapes import render_coverage, shape_polygon
from kneuron.engine.data.world import (
    BACKGROUNDS,
    CATEGORIES,
    COLOR_RGB,
    COLORS,
    SIZES,
    SPLITS,
    WorldConfig,
    caption_vocabulary,
    ensure_world,
    generate_world,
    relation,
    render_world_image,
    world_config_of,
    world_splits,
)
from kneuron.engine.errors import KneuronError
from tests.helpers.cli_runner import run_cli

# free placement at 64 px (the default world uses a 4x4 layout at 128 px; see test_layout_*)
FREE = dict(image_size=64, layout_cells=0)
TINY = WorldConfig(seed=3, n_train=8, n_val=4, n_test=8, **FREE)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "w", TINY)


def _load(world: Path, kind: str, split: str) -> dict:
    return json.loads((world / "annotations" / f"{kind}_{split}.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects_by_image(world: Path, split: str) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in _load(world, "instances", split)["images"]}
    for ann in _load(world, "instances", split)["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return by_image


def test_regenerating_gives_byte_identical_files(world: Path, tmp_path: Path) -> None:
    again = generate_world(tmp_path / "again", TINY)
    first, second = _files(world), _files(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".png")]) == 20
    assert first == second


def test_another_seed_gives_another_world(world: Path, tmp_path: Path) -> None:
    other = generate_world(tmp_path / "other", WorldConfig(seed=4, n_train=8, n_val=4, n_test=8, **FREE))
    assert _load(other, "instances", "train")["annotations"] != _load(world, "instances", "train")["annotations"]
    assert _load(other, "captions", "test")["annotations"] != _load(world, "captions", "test")["annotations"]
    assert (other / "val").joinpath("000002000001.png").read_bytes() != (world / "val/000002000001.png").read_bytes()


def test_val_and_test_do_not_depend_on_n_train(world: Path, tmp_path: Path) -> None:
    other = generate_world(tmp_path / "n1", WorldConfig(seed=3, n_train=1, n_val=4, n_test=8, **FREE))
    for split in ("val", "test"):
        for kind in ("instances", "captions"):
            assert _load(other, kind, split)["annotations"] == _load(world, kind, split)["annotations"]
        assert _files(other / split) == _files(world / split)


def test_pycocotools_reads_the_world(world: Path) -> None:
    for split, n in (("train", 8), ("val", 4), ("test", 8)):
        coco = COCO(str(world / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == n
        assert [(c["id"], c["name"], c["supercategory"]) for c in coco.loadCats(coco.getCatIds())] == [
            (i + 1, name, "shape") for i, name in enumerate(CATEGORIES)
        ]
        for info in coco.imgs.values():
            image = Image.open(world / split / info["file_name"])
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    assert world_config_of(world) == TINY
    assert CATEGORIES == ("circle", "square", "triangle", "star", "cross", "heart", "hexagon", "diamond")


def test_objects_are_distinct_and_annotated(world: Path) -> None:
    ann_ids = set()
    for split in SPLITS:
        for _image_id, anns in _objects_by_image(world, split).items():
            assert 1 <= len(anns) <= 3
            assert len({a["category_id"] for a in anns}) == len(anns)
            assert len({a["attributes"]["color"] for a in anns}) == len(anns)
            for ann in anns:
                assert ann["attributes"]["color"] in COLORS and ann["attributes"]["size"] in SIZES
                assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 8
                ann_ids.add(ann["id"])
    assert len(ann_ids) == sum(len(_load(world, "instances", s)["annotations"]) for s in SPLITS)


def test_masks_match_area_bbox_and_stay_mostly_visible(world: Path) -> None:
    for split in SPLITS:
        for _image_id, anns in _objects_by_image(world, split).items():
            union = np.zeros((64, 64), dtype=int)
            for ann in anns:
                mask = mask_utils.decode(ann["segmentation"]).astype(bool)
                attrs = ann["attributes"]
                assert mask.sum() == ann["area"] > 0
                rows, cols = np.nonzero(mask)
                assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
                # Re-render the unoccluded object from its stored geometry.
                polygon = shape_polygon(CATEGORIES[ann["category_id"] - 1], attrs["center"], attrs["diameter"],
                                        attrs["rotation_deg"])
                grow = 1.0 if attrs["outline"] else 0.0
                full = render_coverage(polygon, 64, 64, grow_px=grow) >= 0.5
                assert full.sum() == attrs["full_area"]
                assert not (mask & ~full).any()
                assert ann["area"] >= 0.75 * attrs["full_area"]
                low, high = {"small": (14, 18), "large": (24, 30)}[attrs["size"]]
                assert low <= attrs["diameter"] <= high
                union += mask
            assert union.max() <= 1  # visible masks never overlap


def test_pixels_show_the_annotated_colour(world: Path) -> None:
    for split in SPLITS:
        images = {image["id"]: image for image in _load(world, "instances", split)["images"]}
        for ann in _load(world, "instances", split)["annotations"]:
            pixels = np.asarray(Image.open(world / split / images[ann["image_id"]]["file_name"]))
            inside = pixels[mask_utils.decode(ann["segmentation"]).astype(bool)]
            exact = (inside == np.array(COLOR_RGB[ann["attributes"]["color"]])).all(axis=1)
            assert exact.mean() >= 0.35, ann


def test_all_backgrounds_and_outlines_occur() -> None:
    config = WorldConfig()
    seen, outlined = set(), 0
    for index in range(60):
        _, objects, background = render_world_image(np.random.default_rng([7, 0, index]), config)
        seen.add(background)
        outlined += sum(obj.outline is not None for obj in objects)
    assert seen == set(BACKGROUNDS)
    assert outlined > 0


def test_every_caption_names_every_object_and_the_background(world: Path) -> None:
    for split in SPLITS:
        images = {image["id"]: image for image in _load(world, "instances", split)["images"]}
        objects = _objects_by_image(world, split)
        captions: dict[int, list[str]] = {}
        for ann in _load(world, "captions", split)["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
        assert sorted(captions) == sorted(images)
        for image_id, texts in captions.items():
            assert len(texts) == 5 and len(set(texts)) == 5
            for text in texts:
                assert text == text.lower() and text == " ".join(text.split())
                words = text.split()
                named = [(a["attributes"]["color"], CATEGORIES[a["category_id"] - 1], a["attributes"]["size"])
                         for a in objects[image_id]]
                assert sorted(w for w in words if w in CATEGORIES) == sorted(n[1] for n in named)
                assert sorted(w for w in words if w in COLORS) == sorted(n[0] for n in named)
                for color, shape, size in named:
                    found = re.search(rf"(?:\b(small|large) )?\b{color} {shape}\b", text)
                    assert found, (text, color, shape)
                    assert found.group(1) in (None, size)
                assert f"{images[image_id]['background']} background" in text


def test_relation_from_centres() -> None:
    assert relation((32, 10), (32, 50), 64) == "above"
    assert relation((32, 50), (32, 10), 64) == "below"
    assert relation((10, 30), (50, 34), 64) == "left of"
    assert relation((50, 30), (10, 34), 64) == "right of"
    assert relation((10, 10), (40, 40), 64) == "next to"  # diagonal
    assert relation((30, 30), (36, 32), 64) == "next to"  # close


def test_caption_vocabulary(world: Path) -> None:
    vocabulary = caption_vocabulary(world)
    expected = {w for s in SPLITS for a in _load(world, "captions", s)["annotations"] for w in a["caption"].split()}
    assert vocabulary == sorted(expected)
    assert {"background", ":", ","} <= set(vocabulary)
    with pytest.raises(KneuronError, match="captions"):
        caption_vocabulary(world / "train")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_objects": 5}, "max_objects"), ({"image_size": 16}, "image_size"), ({"captions_per_image": 2}, "captions"),
     ({"seed": -1}, "seed"), ({"n_val": -3}, "n_val")],
)
def test_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(KneuronError, match=message):
        WorldConfig(**kwargs)


def test_other_image_size_scales_objects(tmp_path: Path) -> None:
    config = WorldConfig(seed=1, image_size=96, n_train=0, n_val=0, n_test=3, captions_per_image=3, layout_cells=0)
    out = generate_world(tmp_path / "big", config)
    for ann in _load(out, "instances", "test")["annotations"]:
        low, high = {"small": (21, 27), "large": (36, 45)}[ann["attributes"]["size"]]
        assert low <= ann["attributes"]["diameter"] <= high
        assert mask_utils.decode(ann["segmentation"]).shape == (96, 96)
    assert all(len([c for c in _load(out, "captions", "test")["annotations"] if c["image_id"] == i["id"]]) == 3
               for i in _load(out, "instances", "test")["images"])


def _run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    return run_cli(["world", *args], capsys)


def test_cli_generates_and_guards_other_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli_world"
    small = ["--n-train", "3", "--n-val", "1", "--n-test", "1"]
    code, stdout, _ = _run_cli([str(out), *small], capsys)
    assert code == 0 and "train 3, val 1, test 1" in stdout and "8 categories" in stdout
    assert len(list((out / "train").glob("*.png"))) == 3
    assert _run_cli([str(out), *small], capsys)[0] == 0  # same config: regenerated in place

    code, _, stderr = _run_cli([str(out), "--seed", "5", *small], capsys)
    assert code == 2 and "--force" in stderr and "seed 0 -> 5" in stderr and stderr.count("\n") == 1
    assert world_config_of(out).seed == 0

    code, _, _ = _run_cli([str(out), "--seed", "5", "--n-train", "2", "--n-val", "1", "--n-test", "1", "--force"],
                          capsys)
    assert code == 0 and world_config_of(out).seed == 5
    assert len(list((out / "train").glob("*.png"))) == 2  # stale image of the old world removed

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, stderr = _run_cli([str(foreign), *small], capsys)
    assert code == 2 and "not a kneuron world" in stderr and str(foreign) in stderr
    assert not (foreign / "train").exists()


def test_cli_defaults_are_the_embedded_world(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "default_like"
    code, stdout, _ = _run_cli([str(out), "--n-train", "1", "--n-val", "1", "--n-test", "1"], capsys)
    assert code == 0 and "128 px" in stdout
    assert world_config_of(out) == replace(WorldConfig(), n_train=1, n_val=1, n_test=1)


def test_ensure_world_reuses_a_complete_world(tmp_path: Path) -> None:
    config = WorldConfig(seed=9, n_train=2, n_val=1, n_test=1, **FREE)
    out = ensure_world(tmp_path / "e", config)
    image = out / "train" / "000001000001.png"
    image.write_bytes(b"left alone")
    assert ensure_world(out, config) == out and image.read_bytes() == b"left alone"  # not regenerated
    with pytest.raises(KneuronError, match=r"another config \(n_train 2 -> 3\)"):
        ensure_world(out, WorldConfig(seed=9, n_train=3, n_val=1, n_test=1, **FREE))
    manifest = json.loads((out / "world.json").read_text())
    (out / "world.json").write_text(json.dumps({**manifest, "complete": False}))
    ensure_world(out, config)  # an interrupted generation is redone
    assert image.read_bytes() != b"left alone" and Image.open(image).size == (64, 64)


def test_layout_puts_objects_in_distinct_cells_sized_to_the_cell() -> None:
    from kneuron.engine.data.world import SIZE_RANGE_OF_CELL

    config = WorldConfig(seed=5, image_size=128, layout_cells=4, jitter_px=1)
    pitch = config.image_size / config.layout_cells
    for index in range(40):
        _, objects, _ = render_world_image(np.random.default_rng([5, 0, index]), config)
        cells = set()
        for obj in objects:
            col, row = int(obj.center[0] // pitch), int(obj.center[1] // pitch)
            cells.add((row, col))
            anchor = ((col + 0.5) * pitch, (row + 0.5) * pitch)
            # centre: the cell centre +- jitter (jitter scales with size/64; edge cells may be pushed inwards by
            # the outline margin)
            tolerance = config.jitter_px * config.image_size / 64 + 4
            assert abs(obj.center[0] - anchor[0]) <= tolerance and abs(obj.center[1] - anchor[1]) <= tolerance
            low, high = SIZE_RANGE_OF_CELL[obj.size]
            assert low * pitch - 1e-6 <= obj.diameter <= high * pitch + 1e-6
        assert len(cells) == len(objects)


def test_layout_must_hold_the_objects() -> None:
    with pytest.raises(KneuronError, match="cannot hold"):
        WorldConfig(layout_cells=1, max_objects=3)


def _digests(root: Path, split: str) -> dict[str, str]:
    """sha256 of every file of one split: its PNGs and its two COCO files."""
    import hashlib

    paths = sorted((root / split).glob("*.png")) + sorted((root / "annotations").glob(f"*_{split}.json"))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_splits_on_demand_are_the_bytes_of_a_world_made_in_one_go(world: Path, tmp_path: Path) -> None:
    lazy = ensure_world(tmp_path / "lazy", TINY, splits=("test",))
    assert not (lazy / "train").exists() and not (lazy / "val").exists()
    assert _digests(lazy, "test") == _digests(world, "test") and len(_digests(lazy, "test")) == TINY.n_test + 2
    manifest = json.loads((lazy / "world.json").read_text())
    assert manifest["complete"] is False and manifest["splits"] == ["test"] and list(manifest["counts"]) == ["test"]
    assert world_splits(manifest) == ("test",)

    image = lazy / "test" / "000003000001.png"
    image.write_bytes(b"left alone")
    ensure_world(lazy, TINY, splits=("train",))  # only the missing split is written; test is reused
    assert image.read_bytes() == b"left alone" and _digests(lazy, "train") == _digests(world, "train")
    assert world_splits(json.loads((lazy / "world.json").read_text())) == ("train", "test")

    generate_world(lazy, TINY, splits=("test",))  # regenerating a split gives its bytes again
    ensure_world(lazy, TINY)  # None: every split; val is the last one missing
    assert _files(lazy) == _files(world)  # now the same world, manifest included (complete, no "splits" key)


def test_world_splits_reads_old_and_partial_manifests() -> None:
    assert world_splits(None) == ()
    assert world_splits({"complete": True}) == SPLITS  # a world written before splits on demand
    assert world_splits({"complete": False, "splits": ["test", "train"]}) == ("train", "test")
    assert world_splits({"complete": False}) == ()
    with pytest.raises(KneuronError, match="unknown world split"):
        ensure_world(Path("unused"), TINY, splits=("dev",))


def test_cli_generates_only_the_named_splits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "only_test"
    code, stdout, _ = _run_cli([str(out), "--n-train", "3", "--n-val", "1", "--n-test", "2", "--split", "test"],
                               capsys)
    assert code == 0 and "images test 2;" in stdout
    assert not (out / "train").exists() and len(list((out / "test").glob("*.png"))) == 2


def test_demo_generates_only_the_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    from dataclasses import asdict
    from functools import partial

    import kneuron.engine.data.world as world_module
    from kneuron.cli.demo import demo_world

    monkeypatch.setattr(world_module, "WorldConfig", partial(WorldConfig, **asdict(TINY)))  # the default, smaller
    root = demo_world(str(tmp_path / "w"))
    assert root == str((tmp_path / "w").resolve()) and "test split" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["annotations", "test", "world.json"]
    stamp = (tmp_path / "w" / "annotations" / "instances_test.json").stat().st_mtime_ns
    assert demo_world(str(tmp_path / "w")) == root and capsys.readouterr().err == ""  # reused, not regenerated
    assert (tmp_path / "w" / "annotations" / "instances_test.json").stat().st_mtime_ns == stamp
    monkeypatch.setenv("KNEURON_WORLD", str(tmp_path / "w"))
    assert demo_world(None) == root
    coco = tmp_path / "coco"  # another COCO-layout folder is read as it is
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_test.json").write_text("{}")
    assert demo_world(str(coco)) == str(coco.resolve()) and not (coco / "world.json").exists()
