"""Category names of any script work; names that cannot work are refused at ingest, before anything is recorded.

Probes of issue 22: `normalise` kept only ``[0-9a-z]``, so ``猫`` and ``..`` became empty (suppress and report
aborted) and ``café`` became ``caf``; ``--save-inpainted`` with a category ``..`` wrote into the parent of DIR;
a 300-character name aborted ingest midway; an annotation of an image not in ``images`` went into a split.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.data.names import MAX_NAME_BYTES, check_concept_names, file_component, name_folder
from kneuron.engine.data.world import WorldConfig, generate_world
from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.mentions import mentions, normalise
from kneuron.engine.reporting.document import slug
from tests.faults.test_ingest_faults import ingest_args, model_dir  # noqa: F401  (fixture)
from tests.helpers.cli_runner import run_cli


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world") / "w",
                          WorldConfig(seed=1, image_size=32, n_train=0, n_val=0, n_test=12))


def renamed(pristine: Path, tmp_path: Path, names: dict[str, str]) -> Path:
    """A copy of the world whose categories are renamed (old -> new)."""
    world = Path(shutil.copytree(pristine, tmp_path / "world"))
    path = world / "annotations" / "instances_test.json"
    data = json.loads(path.read_text())
    for category in data["categories"]:
        category["name"] = names.get(category["name"], category["name"])
    path.write_text(json.dumps(data))
    return world


def test_normalise_keeps_letters_of_every_script() -> None:
    assert normalise("猫") == ["猫"] and normalise("Café au lait") == ["café", "au", "lait"]
    assert normalise("ＦＵＬＬ-width") == ["full", "width"] and normalise("Straße") == ["strasse"]
    assert normalise("हिन्दी") == ["हिन्दी"] and normalise("..") == []
    assert normalise("a dog, on grass!") == ["a", "dog", "on", "grass"]  # ASCII as before
    assert mentions("一只 猫 在 草地", "猫") and not mentions("a dog", "猫")
    assert mentions("un café noir", "café") and not mentions("un café noir", "caf")


@pytest.mark.parametrize("names, message", [
    (["cat", ".."], "has no letter or digit"),
    (["Cat", "cat"], "are the same words"),
    (["traffic light", "Traffic_Light"], "are the same words"),
    (["x" * 300], "too long for a warehouse directory"),
])
def test_names_that_cannot_work_are_refused(names, message) -> None:
    with pytest.raises(KneuronError, match=message) as info:
        check_concept_names(names, "instances.json")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("new, message", [("..", "has no letter or digit"), ("STAR", "are the same words")])
def test_ingest_refuses_before_recording(pristine, tmp_path, capsys, model_dir, new, message) -> None:  # noqa: F811
    world = renamed(pristine, tmp_path, {"circle": new} if new == ".." else {"square": "star", "star": "STAR"})
    wh = tmp_path / "wh"
    args = ingest_args(world, model_dir, wh)
    args = [a if a not in ("circle", "square", "star") else {"circle": new if new == ".." else "circle",
                                                            "square": "star", "star": "STAR"}[a] for a in args]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and err.startswith("kneuron: error: ") and err.count("\n") == 1 and message in err
    assert not wh.exists() or not list(wh.rglob("*.parquet"))


def test_file_names_from_names_stay_inside_and_short(tmp_path) -> None:
    for name in ("..", ".", "a/../../b", "猫" * 300, "x" * 300, "/etc"):
        folder = name_folder(tmp_path, name)
        assert folder.parent == tmp_path and len(folder.name.encode()) <= MAX_NAME_BYTES
        assert folder.name not in (".", "..") and "/" not in folder.name
    assert file_component("x" * 300) != file_component("x" * 299 + "y")
    assert slug("猫") != slug("犬") and slug("..") not in ("", ".", "..") and len(slug("y" * 300)) <= 72


def test_orphan_annotations_are_skipped_with_a_reason(pristine, tmp_path, caplog) -> None:
    world = Path(shutil.copytree(pristine, tmp_path / "world"))
    path = world / "annotations" / "instances_test.json"
    data = json.loads(path.read_text())
    orphan = {**data["annotations"][0], "id": 999_999, "image_id": 777_777}
    data["annotations"].append(orphan)
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        dataset = CocoDataset(world, "test")
    assert dataset.orphan_annotations == [999_999]
    name = dataset.categories[orphan["category_id"]]
    assert 777_777 not in dataset.images_with(name)
    assert "image_id is not in its images" in caplog.text and "999999" in caplog.text
