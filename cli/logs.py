"""The command line's one log handler: each record of kneuron's loggers as one line on stderr.

Library code only logs (``logging.getLogger(__name__)``); the CLI decides where records go. `installed` puts a
handler on the loggers of kneuron's packages for as long as a command runs and takes it away afterwards.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click

#: the logger of kneuron's packages (every module logger, ``kneuron.engine...``, ``kneuron.cli...``, is its child)
LOGGERS = ("kneuron",)


class EchoHandler(logging.Handler):
    """Writes ``kneuron: <message>`` (warnings and errors: ``kneuron: warning: ...``) to the current stderr, one
    line per record (a message's line breaks become ``; ``); debug records name their logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = "; ".join(line for line in record.getMessage().splitlines() if line.strip())
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            elif record.levelno < logging.INFO:
                message = f"debug: {record.name}: {message}"
            click.echo(f"kneuron: {message}", err=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def level_of(quiet: bool, verbose: bool) -> int:
    """``-q``: warnings and errors only; ``-v``: debug records too; else info."""
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


@contextmanager
def installed(level: int) -> Iterator[EchoHandler]:
    """An `EchoHandler` on `LOGGERS` at ``level`` within the block, the only place their records go; the loggers'
    levels, handlers and propagation as they were afterwards."""
    handler = EchoHandler(level)
    before = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        before[name] = (logger.level, logger.propagate)
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False  # a root handler some library set up (logging.basicConfig) would repeat the line
    try:
        yield handler
    finally:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(before[name][0])
            logger.propagate = before[name][1]
