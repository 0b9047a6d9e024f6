"""The COCO loader on a hand-written COCO 2017 fixture (odd image modes, crowd, polygons) and on the world."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kneuron.engine.data.coco import CocoDataset, split_ident_eval
from kneuron.engine.data.world import CATEGORIES, WorldConfig, generate_world
from kneuron.engine.errors import KneuronError

H, W = 16, 20
RGB = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)


def _dog_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[3:7, 14:19] = True
    mask[12, 1] = True
    return mask


def _crowd_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[5:9, 2:6] = True
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE written by hand: run lengths over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F").astype(int)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def _compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    images = root / "val2017"
    images.mkdir()
    (root / "annotations").mkdir()
    Image.fromarray(RGB).save(images / "000000000001.png")
    Image.new("L", (W, H), 77).save(images / "000000000002.png")
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(images / "000000000003.jpg", quality=95)
    rgba = np.concatenate([RGB, np.full((H, W, 1), 40, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(images / "000000000004.png")
    (images / "000000000005.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg \n second line")
    Image.fromarray(np.full((H, W), 32768, dtype=np.uint16)).save(images / "000000000007.png")
    Image.new("RGB", (10, 10)).save(images / "000000000008.png")
    palette = Image.new("P", (W, H), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(images / "000000000009.png")
    sizes = {i: (W, H) for i in range(1, 10)}
    instances = {
        "info": {"description": "fixture"},
        "licenses": [],
        "images": [{"id": i, "file_name": f"{i:012d}.{'jpg' if i in (3, 5, 6) else 'png'}",
                    "width": w, "height": h} for i, (w, h) in sizes.items()],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 10, "name": "traffic light", "supercategory": "outdoor"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
        "annotations": [
            # image 1: two people (polygons) and a dog (compressed RLE)
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 80.0, "bbox": [2, 2, 10, 8],
             "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0, "bbox": [15, 11, 2, 2],
             "segmentation": [[15, 11, 17, 11, 17, 13, 15, 13]]},
            {"id": 13, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 21.0, "bbox": [1, 3, 18, 10],
             "segmentation": _compressed_rle(_dog_mask())},
            # image 2: only a crowd of people (uncompressed RLE)
            {"id": 21, "image_id": 2, "category_id": 1, "iscrowd": 1, "area": 16.0, "bbox": [2, 5, 4, 4],
             "segmentation": _uncompressed_rle(_crowd_mask())},
            # image 3: a tiny dog and a degenerate traffic light (no pixels)
            {"id": 31, "image_id": 3, "category_id": 18, "iscrowd": 0, "area": 5.0, "bbox": [0, 0, 2, 2],
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
            {"id": 32, "image_id": 3, "category_id": 10, "iscrowd": 0, "area": 0.0, "bbox": [5, 5, 0, 0],
             "segmentation": [[5, 5, 5, 5, 5, 5]]},
            # image 6 has no file on disk; image 5 is corrupt
            {"id": 61, "image_id": 6, "category_id": 18, "iscrowd": 0, "area": 30.0, "bbox": [0, 0, 5, 6],
             "segmentation": [[0, 0, 5, 0, 5, 6, 0, 6]]},
        ],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    captions = {"annotations": [
        {"id": 102, "image_id": 1, "caption": "Two people  and a dog.\n"},
        {"id": 101, "image_id": 1, "caption": "A dog near people"},
        {"id": 201, "image_id": 2, "caption": " A crowd. "},
    ]}
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(captions))
    return root


@pytest.fixture(scope="module")
def coco(coco_root: Path) -> CocoDataset:
    return CocoDataset(coco_root, "val2017")


def test_missing_files_name_the_path(tmp_path: Path, coco_root: Path) -> None:
    with pytest.raises(KneuronError, match="instances_val2017.json"):
        CocoDataset(tmp_path, "val2017")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(KneuronError, match=f"image folder not found: {tmp_path / 'val2017'}"):
        CocoDataset(tmp_path, "val2017")
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(KneuronError, match="unreadable COCO instances file"):
        CocoDataset(tmp_path, "val2017")


def test_categories_and_concept_names(coco: CocoDataset) -> None:
    assert coco.categories == {1: "person", 10: "traffic light", 18: "dog"}
    assert coco.category_id("dog") == 18
    assert coco.category_id(" Traffic Light") == 10
    with pytest.raises(KneuronError, match=r"unknown concept 'persn' .*instances_val2017.json.*close names: person"):
        coco.category_id("persn")
    with pytest.raises(KneuronError, match=r"unknown concept 'zebra'.*known: dog, person, traffic light"):
        coco.category_id("zebra")


def test_images_with_and_concepts_in(coco: CocoDataset) -> None:
    assert coco.image_ids() == list(range(1, 10))
    assert coco.images_with("person") == [1]  # image 2 has only a crowd
    assert coco.images_with("dog") == [1, 3, 6]
    assert coco.images_with("dog", min_area=10) == [1, 6]
    assert coco.images_with("person", min_area=81) == []
    assert coco.concepts_in(1) == ["person", "dog"]
    assert coco.concepts_in(2) == []
    assert coco.concepts_in(3) == ["traffic light", "dog"]
    with pytest.raises(KneuronError, match="image id 99"):
        coco.concepts_in(99)


def test_concept_masks(coco: CocoDataset) -> None:
    assert np.array_equal(coco.concept_mask(1, "dog"), _dog_mask())
    assert np.array_equal(coco.concept_mask(2, "person"), _crowd_mask())  # crowd regions are included
    person = coco.concept_mask(1, "person")
    assert person.dtype == bool and person.shape == (H, W)
    assert person[3:10, 3:12].all()  # inside both polygons
    assert person[11:13, 15:17].all()
    assert person.sum() <= 9 * 11 + 3 * 3  # the two polygons, with pycocotools' boundary pixels at most
    assert not person[:, :2].any() and not person[14:, :].any()
    with pytest.raises(KneuronError, match="empty mask: concept 'traffic light' has no pixels in image 3"):
        coco.concept_mask(3, "traffic light")
    with pytest.raises(KneuronError, match="empty mask: concept 'person'"):
        coco.concept_mask(3, "person")


def test_load_image_converts_modes_to_rgb(coco: CocoDataset) -> None:
    images = {i: coco.load_image(i) for i in (1, 2, 3, 4, 7, 9)}
    assert all(image.mode == "RGB" and image.size == (W, H) for image in images.values())
    assert np.array_equal(np.asarray(images[1]), RGB)
    assert (np.asarray(images[2]) == 77).all()
    red = np.asarray(images[3]).astype(int)
    assert (red[..., 0] > 200).all() and (red[..., 1:] < 60).all()  # CMYK (0, 255, 255, 0) is red
    assert np.array_equal(np.asarray(images[4]), RGB)  # alpha dropped
    assert (np.abs(np.asarray(images[7]).astype(int) - 128) <= 1).all()  # 16-bit gray scaled
    assert (np.asarray(images[9]) == np.array([10, 200, 30])).all()
    assert coco.image_path(1) == coco.image_dir / "000000000001.png"


def test_bad_images_give_one_line_errors(coco: CocoDataset) -> None:
    with pytest.raises(KneuronError) as corrupt:
        coco.load_image(5)
    assert "corrupt or unreadable image" in str(corrupt.value) and "000000000005.jpg" in str(corrupt.value)
    assert "\n" not in str(corrupt.value)
    with pytest.raises(KneuronError, match=r"image file not found: .*000000000006\.jpg"):
        coco.load_image(6)
    with pytest.raises(KneuronError, match="is 10x10 but instances_val2017.json says 20x16"):
        coco.load_image(8)


def test_captions(coco: CocoDataset, coco_root: Path, tmp_path: Path) -> None:
    assert coco.captions(1) == ["A dog near people", "Two people and a dog."]
    assert coco.captions(2) == ["A crowd."]
    assert coco.captions(3) == []
    bare = tmp_path / "bare"
    (bare / "annotations").mkdir(parents=True)
    (bare / "val2017").mkdir()
    (bare / "annotations" / "instances_val2017.json").write_bytes(
        (coco_root / "annotations" / "instances_val2017.json").read_bytes())
    assert CocoDataset(bare, "val2017").captions(1) == []


def test_reads_the_shapes_world(tmp_path: Path) -> None:
    world = generate_world(tmp_path / "w",
                           WorldConfig(seed=2, n_train=0, n_val=0, n_test=6, image_size=64, layout_cells=0))
    data = CocoDataset(world, "test")
    assert sorted(data.categories.values()) == sorted(CATEGORIES)
    instances = json.loads((world / "annotations" / "instances_test.json").read_text())
    assert data.image_ids() == sorted(image["id"] for image in instances["images"])
    for ann in instances["annotations"]:
        name = data.categories[ann["category_id"]]
        assert name in data.concepts_in(ann["image_id"])
        assert ann["image_id"] in data.images_with(name)
        assert data.concept_mask(ann["image_id"], name).sum() == ann["area"]
    for image_id in data.image_ids():
        assert data.load_image(image_id).size == (64, 64)
        texts = data.captions(image_id)
        assert len(texts) == 5
        assert all(concept in text for concept in data.concepts_in(image_id) for text in texts)


def test_split_ident_eval() -> None:
    ids = list(range(1000, 1100))
    ident, evaluation = split_ident_eval(ids, 0.3, seed=0, key="dog")
    assert len(ident) == 30 and len(evaluation) == 70
    assert set(ident).isdisjoint(evaluation) and set(ident) | set(evaluation) == set(ids)
    assert ident == sorted(ident) and evaluation == sorted(evaluation)
    assert ident != ids[:30]  # hashed, not a prefix
    shuffled = ids[::-1] + ids[:10]  # other order, with duplicates
    random.Random(1).shuffle(shuffled)
    assert split_ident_eval(shuffled, 0.3, seed=0, key="dog") == (ident, evaluation)
    assert split_ident_eval(ids, 0.3, seed=1, key="dog")[0] != ident
    assert split_ident_eval(ids, 0.3, seed=0, key="cat")[0] != ident
    assert split_ident_eval(ids, 0.0, 0, "dog") == ([], ids)
    assert split_ident_eval(ids, 1.0, 0, "dog") == (ids, [])
    assert split_ident_eval([], 0.5, 0, "dog") == ([], [])
    with pytest.raises(KneuronError, match="ident_fraction"):
        split_ident_eval(ids, 1.5, 0, "dog")


# ------------------------------------------------------------------------------------------ malformed annotations
BAD_SEGMENTATIONS = {
    # annotation id: (segmentation, the reason in the error)
    101: ([[1, 2, 3]], "polygon 0 has 3 coordinates (needs an even number, at least 6: x,y of three points or more)"),
    102: ([[1, 2, 3, 4]], "polygon 0 has 4 coordinates"),
    103: ([[1, 1, 8, 1, 8, 8], [2, 2, 5]], "polygon 1 has 3 coordinates"),
    104: ([], "empty polygon list"),
    105: ([["a", 2, 3, 4, 5, 6]], "polygon 0 is not a list of numbers"),
    106: ({"size": [5, 5], "counts": [25]}, "RLE size [5, 5] is not the image's [height, width] [16, 20]"),
    107: ({"size": [H, W], "counts": [10, 20]}, "RLE run lengths cover 30 pixels, not the image's 320"),
    108: ({"size": [H, W], "counts": "0"}, "RLE run lengths cover 0 pixels, not the image's 320"),
    109: ({"size": [H, W], "counts": "zz!!"}, "RLE counts string is not valid compressed RLE"),
    110: (None, "segmentation is neither polygons nor RLE: NoneType"),
    111: ([[1, 1, 8, 1, 8, 1e12]], "polygon 0 reaches far outside the 20x16 image"),
}


@pytest.fixture()
def bad_coco(tmp_path: Path) -> CocoDataset:
    """Image 1 has a good dog and one malformed cat annotation per bad case; each case is its own image."""
    root = tmp_path / "bad"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    image_ids = [1] + sorted(BAD_SEGMENTATIONS)
    for image_id in image_ids:
        Image.fromarray(RGB).save(root / "val2017" / f"{image_id:012d}.png")
    annotations = [{"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 80.0, "bbox": [2, 2, 10, 8],
                    "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]}]
    for ann_id, (segmentation, _) in BAD_SEGMENTATIONS.items():
        annotations.append({"id": ann_id, "image_id": ann_id, "category_id": 17, "iscrowd": 0, "area": 9.0,
                            "bbox": [1, 1, 3, 3], "segmentation": segmentation})
        annotations.append({"id": 1000 + ann_id, "image_id": ann_id, "category_id": 18, "iscrowd": 0, "area": 9.0,
                            "bbox": [1, 1, 3, 3], "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]})
    instances = {"images": [{"id": i, "file_name": f"{i:012d}.png", "width": W, "height": H} for i in image_ids],
                 "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}], "annotations": annotations}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    return CocoDataset(root, "val2017")


@pytest.mark.parametrize("ann_id", sorted(BAD_SEGMENTATIONS))
def test_malformed_segmentation_is_one_line_naming_annotation_image_and_file(bad_coco: CocoDataset,
                                                                             ann_id: int) -> None:
    reason = BAD_SEGMENTATIONS[ann_id][1]
    expected = f"malformed segmentation in annotation {ann_id} (image {ann_id}) of {bad_coco.instances_path}: "
    for call in (lambda: bad_coco.concept_mask(ann_id, "cat"), lambda: bad_coco.annotation_mask(ann_id)):
        with pytest.raises(KneuronError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(expected + reason), message
        assert "\n" not in message
    # the same image's other concept and the other images are unaffected: only that (concept, image) pair fails
    assert bad_coco.concept_mask(ann_id, "dog")[1:4, 1:4].all()
    assert bad_coco.images_with("cat") == sorted(BAD_SEGMENTATIONS)  # listing needs no mask


def test_good_annotations_next_to_malformed_ones_decode(bad_coco: CocoDataset) -> None:
    mask = bad_coco.concept_mask(1, "dog")
    assert mask[3:10, 3:12].all() and not mask[12:, :].any()
    assert np.array_equal(bad_coco.annotation_mask(1), mask)
    with pytest.raises(KneuronError, match=re.escape(f"annotation id 999 is not in {bad_coco.instances_path}")):
        bad_coco.annotation_mask(999)


def test_segmentation_problem_without_pycocotools() -> None:
    """Cases pycocotools would crash on (NaN coordinates: a segfault) are caught before it runs."""
    from kneuron.engine.data.coco import segmentation_problem

    assert segmentation_problem([[1, 2, float("nan"), 4, 5, 6]], H, W) == "polygon 0 has a non-finite coordinate"
    assert segmentation_problem([[1, 2, float("inf"), 4, 5, 6]], H, W) == "polygon 0 has a non-finite coordinate"
    assert segmentation_problem([[True, 2, 3, 4, 5, 6]], H, W) == "polygon 0 is not a list of numbers"
    assert segmentation_problem({"counts": [H * W]}, H, W) == "RLE without a [height, width] size: None"
    assert segmentation_problem({"size": [H, W], "counts": [-1, H * W + 1]}, H, W) == "RLE has a negative run length"
    assert segmentation_problem({"size": [H, W], "counts": 5}, H, W) == (
        "RLE counts are neither a list nor a string: int")
    assert segmentation_problem("abc", H, W) == "segmentation is neither polygons nor RLE: str"
    assert segmentation_problem([[2, 2, 12, 2, 12, 10, 2, 10]], H, W) is None
    assert segmentation_problem([[-3, -3, 5, -3, 5, 5]], H, W) is None  # partly outside: pycocotools clips it
    assert segmentation_problem(_uncompressed_rle(_crowd_mask()), H, W) is None
    assert segmentation_problem(_compressed_rle(_dog_mask()), H, W) is None


def test_rle_string_counts_match_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    from kneuron.engine.data.coco import rle_string_counts

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((H, W)) < rng.random()
        expected = _uncompressed_rle(mask)["counts"]
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        assert rle_string_counts(encoded) == expected
        assert rle_string_counts(encoded.decode("ascii")) == expected
    assert rle_string_counts("") == []
    assert rle_string_counts("\x7f") is None  # out of the 6-bit range
    assert rle_string_counts("o") is None  # continuation bit set, then the string ends


def test_malformed_area_is_one_line(bad_coco: CocoDataset, tmp_path: Path) -> None:
    path = bad_coco.instances_path
    data = json.loads(path.read_text())
    data["annotations"][0]["area"] = "big"
    path.write_text(json.dumps(data))
    with pytest.raises(KneuronError, match=re.escape(f"malformed area 'big' in annotation 1 (image 1) of {path}")):
        CocoDataset(bad_coco.root, "val2017").images_with("dog")
