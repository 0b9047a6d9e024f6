"""`kneuron check`: on the embedded world (no --world), only the split it checks is generated."""
from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytest

import kneuron.engine.data.world as world_module
from kneuron.engine.data.world import WorldConfig, read_world_manifest, world_splits
from tests.helpers.cli_runner import run_cli


def test_check_generates_only_the_split_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    small = WorldConfig(seed=1, n_train=4, n_val=2, n_test=2)  # the default, smaller
    monkeypatch.setattr(world_module, "WorldConfig", partial(WorldConfig, **asdict(small)))
    root = tmp_path / "w"
    monkeypatch.setenv("KNEURON_WORLD", str(root))
    code, stdout, err = run_cli(["check", "--split", "val", "--limit", "1"], capsys)
    assert code == 0, err
    assert f"on {root} [val]" in stdout
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "val", "world.json"]
    assert world_splits(read_world_manifest(root)) == ("val",)
