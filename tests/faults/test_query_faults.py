"""A runaway `kneuron sql` query stops: ``--timeout S`` is one line and exit code 2, and Ctrl-C (SIGINT) stops a
running query at once (it used to run on until DuckDB finished; only SIGTERM worked)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kneuron.warehouse import Warehouse
from tests.faults.test_environment_faults import REPO
from tests.helpers.cli_runner import run_cli
from tests.helpers.warehouse_rows import run_row

RUNAWAY = "SELECT count(*) FROM range(100000000) a, range(100000000) b"


@pytest.fixture()
def wh(tmp_path: Path) -> Path:
    root = tmp_path / "wh"
    with Warehouse.open(root, create=True) as writer, writer.batch() as batch:
        batch.add("runs", run_row())
    return root


def test_timeout_stops_a_runaway_query(wh, capsys) -> None:
    started = time.monotonic()
    code, out, err = run_cli(["sql", "--warehouse", str(wh), "--timeout", "0.5", RUNAWAY], capsys)
    assert (code, out) == (2, "")
    assert err == "kneuron: error: the query ran longer than --timeout 0.5 s and was stopped\n"
    assert time.monotonic() - started < 60
    code, out, _ = run_cli(["sql", "--warehouse", str(wh), "--timeout", "30", "SELECT count(*) AS n FROM runs"],
                           capsys)
    assert code == 0 and "1" in out  # a query within its time runs as before


def test_ctrl_c_stops_a_running_query(wh) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "kneuron.cli.main", "sql", "--warehouse", str(wh), RUNAWAY],
                            cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # start-up, then the query runs (it would take hours)
    assert proc.poll() is None
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "kneuron: aborted" and out == ""
    assert time.monotonic() - sent < 30
