"""Run ``kneuron ARGS`` in-process the way the console script does (errors become exit codes)."""
from __future__ import annotations

import pytest

from kneuron.cli.main import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``kneuron ARGS``."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
