"""The `kneuron` group: exit codes of commands (one-line errors are tested with each command)."""
from __future__ import annotations

import click
import pytest

from kneuron.cli.main import COMMANDS
from tests.helpers.cli_runner import run_cli


@click.command("exit-three")
@click.pass_context
def command(ctx: click.Context) -> None:
    """Exit with code 3 through click, as a command that reports a state does."""
    ctx.exit(3)


def test_ctx_exit_code_reaches_the_shell(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(COMMANDS, "exit-three", (__name__, "Exit with code 3."))
    assert run_cli(["exit-three"], capsys)[0] == 3


def test_every_listed_command_has_a_module_and_help(capsys) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for name in COMMANDS:
        assert f"  {name} " in out, name


def test_every_warehouse_option_is_the_shared_one() -> None:
    """``--warehouse`` is one option (`kneuron.cli.options.warehouse_option`): the same name, type and help in
    every command that takes it."""
    import importlib

    import click

    from kneuron.cli.main import COMMANDS

    found = {}
    for name, (module, _) in COMMANDS.items():
        command = importlib.import_module(module).command
        for param in command.params:
            if param.name == "warehouse_path":
                found[name] = (tuple(param.opts), param.help, param.default, type(param.type))
    assert set(found) == {"ingest", "select", "sql", "ls", "verify", "compact", "suppress", "decode", "heatmap",
                          "caption", "edit", "report", "demo"}
    assert set(found.values()) == {(("--warehouse",), "Warehouse directory [default: $KNEURON_WAREHOUSE or "
                                    "./kneuron-warehouse].", None, click.Path)}
