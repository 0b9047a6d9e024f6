"""The `kneuron` click group.

Each command lives in its own module (``cli/<name>.py``) exposing a click command called ``command``.
Commands are imported only when invoked, so ``kneuron --help`` stays fast (no torch import).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, cast

import click

# name -> (module, one-line help shown by `kneuron --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("kneuron.cli.world", "Generate the embedded COCO-format shapes world."),
    "train": ("kneuron.cli.train", "Train a tiny MiniGPT-4 on the embedded world."),
    "check": ("kneuron.cli.check", "Caption-quality check of a model on a COCO-format world."),
    "convert": ("kneuron.cli.convert", "Convert official MiniGPT-4 checkpoints into a kneuron model folder."),
    "caption": ("kneuron.cli.caption", "Caption images, optionally with neurons suppressed."),
    "ingest": ("kneuron.cli.ingest", "Record stage-1/stage-2 neuron signals of COCO images into the warehouse."),
    "select": ("kneuron.cli.select", "Two-stage neuron selection in DuckDB; writes neuron_sets."),
    "sql": ("kneuron.cli.sql", "Run ad-hoc SQL over the warehouse views."),
    "ls": ("kneuron.cli.ls", "List the runs, neuron sets (which is current) or evaluations of a warehouse."),
    "verify": ("kneuron.cli.verify", "Check the warehouse's files against their commit records; --repair."),
    "compact": ("kneuron.cli.compact", "Merge the warehouse's small files into large ones (one atomic step)."),
    "suppress": ("kneuron.cli.suppress", "Suppression evaluation of neuron sets and baselines."),
    "decode": ("kneuron.cli.decode", "Decode neurons to vocabulary tokens."),
    "heatmap": ("kneuron.cli.heatmap", "Activation heatmaps of a neuron set over an image."),
    "edit": ("kneuron.cli.edit", "Write a model folder with a neuron set erased or scaled (down_proj columns)."),
    "report": ("kneuron.cli.report", "Write the HTML/Markdown report of a warehouse."),
    "demo": ("kneuron.cli.demo", "world -> ingest -> select -> suppress -> report on the embedded default."),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when the command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not importlib.util.find_spec(COMMANDS[name][0]):
            return None
        from kneuron.engine.runtime.threads import prepare_process

        prepare_process()  # before a command module imports torch: OpenMP waiting, collector start-up settings
        return cast("click.Command | None", importlib.import_module(COMMANDS[name][0]).command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


#: commands that never use torch: the thread policy does not import it for them
WITHOUT_TORCH = frozenset({"world", "select", "sql", "ls", "verify", "compact"})


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kneuron")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch and DuckDB [default: $OMP_NUM_THREADS, else the CPUs this process may "
                   "use, with one thread for work on small models such as the bundled ones].")
@click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors to stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug lines too (each names its module).")
@click.pass_context
def group(ctx: click.Context, threads: int | None, quiet: bool, verbose: bool) -> None:
    """kneuron: find, store, query and test the knowledge neurons of multimodal LLMs."""
    from kneuron.cli.logs import installed, level_of
    from kneuron.engine.runtime.threads import applied

    if quiet and verbose:
        raise click.UsageError("give at most one of -q/--quiet and -v/--verbose")
    ctx.with_resource(installed(level_of(quiet, verbose)))  # one stderr line per log record, while the command runs

    # the thread policy, once per command, for as long as the command runs (engine/runtime/threads.py)
    ctx.with_resource(applied(threads, with_torch=ctx.invoked_subcommand not in WITHOUT_TORCH))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group; a `KneuronError` becomes one line on stderr and exit code 2."""
    from kneuron.cli.streams import EXIT_OUTPUT, EXIT_PIPE, flush_stdout, os_error_exit, stdout_closed
    from kneuron.engine.errors import KneuronError

    if stdout_closed():
        click.echo("kneuron: error: standard output is closed; nothing would be shown", err=True)
        sys.exit(EXIT_OUTPUT)
    try:
        result = group.main(args=argv, prog_name="kneuron", standalone_mode=False)
        flush_stdout()
        if isinstance(result, int) and not isinstance(result, bool) and result:
            sys.exit(result)  # `ctx.exit(N)` inside a command: click returns N when not standalone
    except SystemExit as exc:
        if exc.code == 1 and type(sys.stdout).__name__.endswith("PacifyFlushWrapper"):
            sys.exit(EXIT_PIPE)  # click turned EPIPE (the reader went away) into a quiet exit 1
        flush_stdout_or_exit(os_error_exit)
        raise
    except OSError as exc:  # read-only output folder, a file where a folder is expected, full or closed stdout
        code, line = os_error_exit(exc)
        if line:
            click.echo(f"kneuron: error: {line}", err=True)
        sys.exit(code)
    except KneuronError as exc:
        click.echo(f"kneuron: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("kneuron: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


def flush_stdout_or_exit(os_error_exit: Any) -> None:
    """Flush stdout before a command's own exit code stands; a failing flush becomes its one line and code."""
    from kneuron.cli.streams import flush_stdout

    try:
        flush_stdout()
    except OSError as exc:
        code, line = os_error_exit(exc)
        if line:
            click.echo(f"kneuron: error: {line}", err=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
