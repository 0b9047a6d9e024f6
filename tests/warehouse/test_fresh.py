"""A failed first ingest leaves no warehouse folder (`kneuron.warehouse.fresh`), and nothing it did not create is
removed."""
from __future__ import annotations

import shutil
from pathlib import Path

from kneuron import warehouse
from kneuron.warehouse.fresh import remove_if_unused
from tests.helpers.cli_runner import run_cli


def test_a_model_that_fails_to_load_leaves_no_warehouse(report_world: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    args = ["ingest", "--coco-root", str(report_world), "--concept", "circle", "--model", str(broken),
            "--no-progress", "--warehouse"]
    code, _, err = run_cli([*args, str(tmp_path / "wh")], capsys)
    assert code == 2 and err.startswith("kneuron: error: unreadable model config") and err.count("\n") == 1
    assert not (tmp_path / "wh").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there before is left as it is
    code, _, _ = run_cli([*args, str(tmp_path / "mine")], capsys)
    assert code == 2 and (tmp_path / "mine").is_dir()


def test_only_an_unused_new_warehouse_is_removed(tmp_path: Path, report_full: Path) -> None:
    with warehouse.Warehouse.open(tmp_path / "a", create=True):
        pass
    assert remove_if_unused(tmp_path / "a") and not (tmp_path / "a").exists()
    shutil.copytree(report_full, tmp_path / "b")  # a warehouse with batches
    assert not remove_if_unused(tmp_path / "b") and warehouse.Warehouse.open(tmp_path / "b").batches
    with warehouse.Warehouse.open(tmp_path / "c", create=True):
        pass
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert not remove_if_unused(tmp_path / "c") and (tmp_path / "c" / "notes.txt").is_file()
