"""Which bundled queries are analyses for people (``kneuron sql --list``) and what each one answers.

Every ``.sql`` file opens with a comment header ``-- <name>.sql: <what it returns>. ...``; its first sentence is
the query's one-line description. The queries the steps run for themselves (the report's ``report_*``, the
evaluation's ``suppress_*``, ``kneuron ls``'s ``list_*``, the selection ``two_stage`` and the run lookups) are
internal: still runnable by name, not listed.
"""
from __future__ import annotations

import re

from kneuron import queries

#: name prefixes of the queries that steps and commands run for themselves
INTERNAL_PREFIXES = ("report_", "suppress_", "list_")
#: other internal queries: the selection (`kneuron select` is its interface) and lookups of the pipelines
INTERNAL = frozenset({"two_stage", "latest_run", "run_sets", "current_set_ids", "evidence_stored"})


def is_internal(name: str) -> bool:
    """Whether the bundled query ``name`` is run by kneuron itself rather than offered as an analysis."""
    return name in INTERNAL or name.startswith(INTERNAL_PREFIXES)


def description(name: str) -> str:
    """The first sentence of the query's comment header (without the ``<name>.sql:`` label)."""
    lines: list[str] = []
    for line in queries.load(name).splitlines():
        stripped = line.strip()
        if not stripped.startswith("--") or stripped == "--":
            break
        lines.append(stripped[2:].strip())
    text = " ".join(lines)
    text = re.sub(rf"^{re.escape(name)}\.sql:\s*", "", text)
    sentence = re.match(r"(.+?\.)(\s|$)", text)
    return (sentence.group(1) if sentence else text).strip()


def analyses() -> list[tuple[str, str]]:
    """(name, one-line description) of every bundled analysis, by name."""
    return [(name, description(name)) for name in queries.names() if not is_internal(name)]
