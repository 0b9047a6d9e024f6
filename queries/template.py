"""Includes in the bundled SQL: one definition of a block that a query needs more than once, or that several
queries need (the two stages of ``two_stage.sql``: fragments/threshold.sql and fragments/score_pass.sql; the current
sets' neurons of ``concept_overlap.sql`` and ``generic_neurons.sql``: fragments/members.sql).

A line ``-- include: NAME key=value ...`` of a bundled query is replaced by ``queries/fragments/NAME.sql`` (less its
leading comment, the fragment's header, written once) in which every ``{{key}}`` becomes ``value``. A query read
from a file (``kneuron sql -f FILE``) takes its fragments from the folder ``fragments/`` beside the file
(`kneuron.queries.load_file`). Values are SQL
names (a CTE, a column, a prefix), never data: data stays a bound ``$parameter``. An include line naming an unknown
fragment, a placeholder left without a value or a value the fragment does not use is a `KneuronError`. Fragments
do not include others.
"""
from __future__ import annotations

import re
from pathlib import Path

from kneuron.engine.errors import KneuronError

FRAGMENT_DIR = Path(__file__).resolve().parent / "fragments"

_INCLUDE = re.compile(r"^--[ \t]*include:[ \t]*(?P<name>[A-Za-z0-9_]+)(?P<args>(?:[ \t]+[A-Za-z_]\w*=\S+)*)[ \t]*$",
                      re.MULTILINE)
_HEADER = re.compile(r"\A(?:[ \t]*(?:--[^\n]*)?\n)*")
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}")


def fragment(name: str, values: dict[str, str], folder: Path | None = None) -> str:
    """``<folder>/<name>.sql`` (default folder: `FRAGMENT_DIR`, the bundled fragments) without its header comment and
    final newline, each ``{{key}}`` replaced by ``values[key]``."""
    path = (FRAGMENT_DIR if folder is None else folder) / f"{name}.sql"
    if not path.is_file():
        raise KneuronError(f"unknown SQL fragment {name!r} (no file {path})")
    text = _HEADER.sub("", path.read_text(encoding="utf-8"), count=1)
    used = set(_PLACEHOLDER.findall(text))
    missing = sorted(used - set(values))
    unused = sorted(set(values) - used)
    if missing or unused:
        raise KneuronError(f"SQL fragment {name!r}: "
                           + "; ".join([*(["no value for " + ", ".join(missing)] if missing else []),
                                        *(["no placeholder for " + ", ".join(unused)] if unused else [])]))
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text).rstrip("\n")


def render(sql: str, folder: Path | None = None) -> str:
    """``sql`` with every include line replaced by its fragment from ``folder`` (default: `FRAGMENT_DIR`); text
    without include lines is returned as is."""

    def expand(match: re.Match[str]) -> str:
        values = dict(arg.split("=", 1) for arg in match.group("args").split())
        return fragment(match.group("name"), values, folder)

    return _INCLUDE.sub(expand, sql)
