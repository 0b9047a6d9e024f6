"""Reads that cannot be silently wrong: a same-size change of a committed file is caught on the first read of
its new bytes (it used to change ``sum(o_mean)`` with no warning; only `kneuron verify` saw it)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kneuron.engine.errors import KneuronError
from kneuron.warehouse import Warehouse, connect
from tests.faults.test_repair_faults import build, files_of
from tests.helpers.cli_runner import run_cli


def change_one_value(path: Path, keep_mtime: bool = False) -> None:
    """Overwrite 4 bytes in the middle of the file (same size), optionally putting its mtime back."""
    stat = path.stat()
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(b ^ 0x55 for b in data[middle:middle + 4])
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "wh"
    return root, build(root)


def test_same_size_change_is_one_line_not_a_wrong_sum(built, capsys) -> None:
    root, ids = built
    target = files_of(root, ids["dog2"], "neuron_stats")[0]
    change_one_value(target)
    code, out, err = run_cli(["sql", "--warehouse", str(root), "SELECT sum(o_mean) FROM neuron_stats"], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("kneuron: error: committed warehouse file ") and err.count("\n") == 1
    assert str(target) in err and "sha256" in err and "kneuron verify --repair" in err


def test_change_after_a_verified_read_is_caught_too(built) -> None:
    root, ids = built
    with connect(root) as con:  # verified once: its stamp is remembered
        before = con.sql("SELECT sum(o_mean) FROM neuron_stats").fetchall()
    with connect(root) as con:
        assert con.sql("SELECT sum(o_mean) FROM neuron_stats").fetchall() == before
    target = files_of(root, ids["cat3"], "neuron_stats")[0]
    change_one_value(target, keep_mtime=True)  # ctime still moves
    with pytest.raises(KneuronError, match="do not match the sha256"):
        connect(root)
    with pytest.raises(KneuronError, match="do not match the sha256"):
        Warehouse.open(root).read("neuron_stats", concept="cat")
