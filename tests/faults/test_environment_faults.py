"""Environment faults are one line on stderr with an exit code of their own (they used to be tracebacks, rc 1):
a read-only output folder, a file where a folder is expected, standard output on a full device, closed, or read
by a process that went away (quiet)."""
from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest

from kneuron.cli.streams import EXIT_BAD_INPUT, EXIT_OUTPUT, EXIT_PIPE
from kneuron.warehouse import Warehouse
from tests.helpers.cli_runner import run_cli
from tests.helpers.warehouse_rows import run_row, sample_rows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def wh(tmp_path: Path) -> Path:
    root = tmp_path / "wh"
    with Warehouse.open(root, create=True) as writer, writer.batch() as batch:
        batch.add("runs", run_row())
        batch.add("samples", sample_rows("dog", [1, 2]))
    return root


def kneuron(args: list[str], **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "kneuron.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, **kwargs)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["sql", "SELECT * FROM samples"], ["ls", "runs"], ["verify"]])
def test_stdout_on_a_full_device_is_one_line(wh, args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "kneuron.cli.main", *args, "--warehouse", str(wh)], cwd=REPO,
                              env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == EXIT_OUTPUT != 1
    assert done.stderr == "kneuron: error: cannot write the output: No space left on device\n"


def test_closed_stdout_is_one_line(wh) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", "-c", f'"{sys.executable}" -m kneuron.cli.main ls runs --warehouse "{wh}" >&-'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_OUTPUT
    assert done.stderr == "kneuron: error: standard output is closed; nothing would be shown\n"


def test_reader_gone_is_quiet(wh) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "kneuron.cli.main", "sql", "--warehouse", str(wh),
                             "SELECT * FROM samples"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before anything is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_PIPE and err == b""


def test_file_where_a_folder_is_expected(wh, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("mine")
    code, out, err = run_cli(["world", str(tmp_path / "afile" / "sub")], capsys)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == f"kneuron: error: cannot write {tmp_path / 'afile' / 'sub'}: Not a directory\n" or \
        (err.startswith(f"kneuron: error: cannot write {tmp_path / 'afile' / 'sub'}") and err.count("\n") == 1)
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("code_", [errno.EROFS, errno.EACCES])
def test_read_only_output_folder(tmp_path, capsys, monkeypatch, code_) -> None:
    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if self.is_relative_to(tmp_path):
            raise OSError(code_, os.strerror(code_), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)  # root ignores chmod: the refusal is simulated
    code, out, err = run_cli(["world", str(tmp_path / "w")], capsys)
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert err.startswith(f"kneuron: error: cannot write {tmp_path / 'w'}") and err.count("\n") == 1
    assert os.strerror(code_) in err
