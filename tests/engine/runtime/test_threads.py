"""The thread policy (`kneuron.engine.runtime.threads`): where the count comes from, what a job on a small model uses,
the
environment it sets before torch loads, DuckDB's count on `queries.connect`, and the `kneuron --threads` option
(scoped to the command: an in-process run leaves torch and the environment as they were)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kneuron import queries
from kneuron.engine.errors import KneuronError
from kneuron.engine.runtime.threads import (
    DUCKDB_THREADS_ENV,
    SMALL_MODEL_PARAMS,
    THREADS_ENV,
    WAIT_ENV,
    ThreadPolicy,
    applied,
    available_cpus,
    choose,
    current,
    job,
    parameter_count,
    prepare_environment,
)
from tests.helpers.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[3]


def test_the_count_comes_from_the_option_then_the_environment_then_the_cpus() -> None:
    assert choose(3, {"OMP_NUM_THREADS": "5"}, cpus=2) == ThreadPolicy(3, explicit=True, source="--threads")
    assert choose(None, {THREADS_ENV: "4", "OMP_NUM_THREADS": "5"}, cpus=2).threads == 4  # nested command
    assert choose(None, {"OMP_NUM_THREADS": "5"}, cpus=2) == ThreadPolicy(5, explicit=True, source="OMP_NUM_THREADS")
    assert choose(None, {}, cpus=2) == ThreadPolicy(2, explicit=False, source="cpus")
    assert choose(None, {"OMP_NUM_THREADS": " "}, cpus=6).threads == 6  # empty: not set
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
    with pytest.raises(KneuronError, match="OMP_NUM_THREADS must be a whole number"):
        choose(None, {"OMP_NUM_THREADS": "two"})
    with pytest.raises(KneuronError, match="OMP_NUM_THREADS must be >= 1"):
        choose(None, {"OMP_NUM_THREADS": "0"})
    with pytest.raises(KneuronError, match="--threads must be >= 1"):
        choose(0)


def test_small_models_run_on_one_thread_unless_the_user_chose_a_count() -> None:
    chosen, default = ThreadPolicy(4, explicit=True), ThreadPolicy(4)
    assert default.job_threads(SMALL_MODEL_PARAMS - 1) == 1
    assert default.job_threads(SMALL_MODEL_PARAMS) == 4 and default.job_threads(None) == 4
    assert chosen.job_threads(10) == 4
    assert "4 thread(s) (cpus)" in default.describe()
    model = torch.nn.Linear(10, 3)
    assert parameter_count(model) == 33 and parameter_count(None) is None and parameter_count("x") is None


def test_a_job_sets_and_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with applied(None, environ={"OMP_NUM_THREADS": "2"}):  # explicit 2: a small model keeps 2
            with job(torch.nn.Linear(2, 2)) as used:
                assert used == 2 and torch.get_num_threads() == 2
        with applied(None, environ={}):
            assert current().explicit is False
            with job(torch.nn.Linear(2, 2)) as used:
                assert used == 1 and torch.get_num_threads() == 1
            assert torch.get_num_threads() == current().threads
        assert torch.get_num_threads() == 2  # the policy's scope restores the count it found
    finally:
        torch.set_num_threads(before)


def test_the_environment_is_set_only_where_the_user_left_it_unset() -> None:
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    changed = prepare_environment(environ)
    assert environ["OMP_WAIT_POLICY"] == "ACTIVE" and "OMP_WAIT_POLICY" not in changed
    assert environ["KMP_BLOCKTIME"] == "0" and environ["TOKENIZERS_PARALLELISM"] == "false"
    assert set(changed) == set(WAIT_ENV) - {"OMP_WAIT_POLICY"}
    environ = {"X": "1"}
    with applied(3, with_torch=False, environ=environ) as policy:
        assert policy.threads == 3 and environ[DUCKDB_THREADS_ENV] == "3" and environ[THREADS_ENV] == "3"
    assert DUCKDB_THREADS_ENV not in environ and THREADS_ENV not in environ and environ["X"] == "1"


def test_duckdb_connections_take_the_policy_count(report_full: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DUCKDB_THREADS_ENV, "1")
    with queries.connect(report_full) as con:
        assert con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
    monkeypatch.setenv(DUCKDB_THREADS_ENV, "3")
    with queries.connect(report_full) as con:
        assert con.execute("SELECT current_setting('threads')").fetchall() == [(3,)]


def test_threads_option_reaches_duckdb_and_is_scoped_to_the_command(report_full: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    before = torch.get_num_threads()
    sql = "SELECT current_setting('threads') AS t"
    code, out, err = run_cli(["--threads", "1", "sql", "--warehouse", str(report_full), "--format", "csv", sql], capsys)
    assert code == 0, err
    assert out.split() == ["t", "1"]
    assert DUCKDB_THREADS_ENV not in os.environ and torch.get_num_threads() == before
    code, _, err = run_cli(["--threads", "0", "ls", "runs"], capsys)
    assert code == 2 and "--threads" in err


def test_a_command_raises_the_young_gc_threshold_unless_the_user_set_one() -> None:
    script = ("import gc, sys; {pre}from kneuron.cli.main import main\ntry:\n    main(['ls', '--help'])\n"
              "except SystemExit:\n    pass\nprint(gc.get_threshold())")
    for pre, expected in (("", "(20000, 10, 10)"), ("gc.set_threshold(500, 5, 5); ", "(500, 5, 5)")):
        result = subprocess.run([sys.executable, "-c", script.format(pre=pre)], capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == expected


def test_waiting_policy_is_set_before_torch_loads() -> None:
    """A fresh `kneuron` process: the command's module sees the variables set (torch not imported before)."""
    script = ("import os, sys; from kneuron.cli.main import main; "
              "sys.argv = ['kneuron', '--threads', '2', 'world', '--help'];"
              "\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in WAIT_ENV and k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "PASSIVE 0 False"  # and `world` does not import torch
