"""`kneuron edit OUT --force` replaces only an earlier edit's output: never a warehouse, $HOME, the current folder,
/, a parent of them or any folder without its edit record (each used to be deleted with exit code 0)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kneuron.engine.interventions.edit import EDIT_FILE
from kneuron.warehouse import Warehouse
from tests.helpers.cli_runner import run_cli


def listing(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def edit(out: Path | str, model: Path, capsys, *extra: str) -> tuple[int, str, str]:  # noqa: ANN001
    return run_cli(["edit", str(out), "--model", str(model), "--neuron", "0:1", "--force", *extra], capsys)


def one_line(err: str) -> str:
    assert err.startswith("kneuron: error: ") and err.count("\n") == 1, err
    return err


def test_force_refuses_the_warehouse(report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    root = tmp_path / "wh"
    Warehouse.open(root, create=True).close()
    before = listing(root)
    code, out, err = edit(root, report_model_dir, capsys, "--warehouse", str(root))
    assert (code, out) == (2, "") and "is " in one_line(err) and "nothing was deleted" in err
    assert listing(root) == before
    code, out, err = edit(root, report_model_dir, capsys)  # not named as the warehouse: no edit record
    assert code == 2 and "replaces only an earlier output" in one_line(err)
    assert listing(root) == before


@pytest.mark.parametrize("where", ["home", "cwd", "parent-of-cwd", "root"])
def test_force_refuses_home_cwd_root_and_parents(where, report_model_dir, tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    (home / EDIT_FILE).write_text('{"format": 1}')  # even with an edit record
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work")
    (home / "work" / "draft.txt").write_text("mine too")
    (home / "work" / EDIT_FILE).write_text('{"format": 1}')
    out = {"home": home, "cwd": Path("."), "parent-of-cwd": Path(".."), "root": Path("/")}[where]
    before = listing(home)
    code, stdout, err = edit(out, report_model_dir, capsys)
    assert (code, stdout) == (2, "") and "refuses to replace" in one_line(err)
    assert listing(home) == before


def test_force_replaces_an_earlier_edit(report_model_dir, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "edited"
    code, _, err = run_cli(["edit", str(out), "--model", str(report_model_dir), "--neuron", "0:1"], capsys)
    assert code == 0, err
    code, _, err = edit(out, report_model_dir, capsys)
    assert code == 0, err and (out / EDIT_FILE).is_file()


def test_world_force_overwrites_only_a_world_outside_home_and_cwd(tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    mine = tmp_path / "mine"
    (mine / "test").mkdir(parents=True)
    (mine / "test" / "000000000001.png").write_bytes(b"my picture")
    code, _, err = run_cli(["world", str(mine), "--n-train", "1", "--n-val", "1", "--n-test", "1", "--force"],
                           capsys)
    assert code == 2 and "is not a kneuron world" in one_line(err)
    assert (mine / "test" / "000000000001.png").read_bytes() == b"my picture"
    world = tmp_path / "w"
    args = ["--n-train", "1", "--n-val", "1", "--n-test", "1"]
    assert run_cli(["world", str(world), *args], capsys)[0] == 0
    monkeypatch.chdir(world)
    code, _, err = run_cli(["world", ".", *args, "--seed", "3", "--force"], capsys)
    assert code == 2 and "refuses to replace" in one_line(err)
    monkeypatch.chdir(tmp_path)
    assert run_cli(["world", str(world), *args, "--seed", "3", "--force"], capsys)[0] == 0
