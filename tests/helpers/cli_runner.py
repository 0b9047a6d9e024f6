"""Run ``kneuron ARGS`` in-process the way the console script does (errors become exit codes), or in a
subprocess killed with SIGKILL right after its first commit (the resume-after-kill-9 tests)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kneuron.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``kneuron ARGS``."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def kill_after_first_commit(args: list[str], warehouse: Path, timeout_s: float) -> None:
    """Run ``kneuron ARGS`` in a subprocess (one thread, from the repository root) and SIGKILL it as soon as
    ``warehouse`` holds more commit records than it did at the start. Fails the test when the process exits
    first (with its stderr) or commits nothing within ``timeout_s``."""
    manifest = Path(warehouse) / "_manifest"

    def records() -> int:
        return len(list(manifest.glob("*.json"))) if manifest.is_dir() else 0

    before = records()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "kneuron.cli.main", *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    try:
        while records() <= before:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, f"no batch committed within {timeout_s:g} s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
