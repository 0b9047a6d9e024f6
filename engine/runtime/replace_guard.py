"""`--force` that cannot delete what kneuron did not make: the checks before a command replaces a folder.

    check_replaceable(Path("edited"), marker="kneuron_edit.json", is_ours=is_edit_record, option="--force",
                      protected=[warehouse_root, model_folder])

A folder may be replaced only when it is an earlier output of the same command (its ``marker`` file passes
``is_ours``) and it is none of: ``/``, the home folder, the current folder, a ``protected`` folder (the warehouse,
the model being read), nor a parent of any of them. Symbolic links are resolved first.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from kneuron.engine.errors import KneuronError


def _places(protected: Iterable[Path | str]) -> list[tuple[str, Path]]:
    places: list[tuple[str, Path]] = [("/", Path("/")), ("the current folder", Path.cwd())]
    home = os.environ.get("HOME")
    if home:
        places.append(("the home folder", Path(home)))
    places.extend((f"{Path(p)}", Path(p)) for p in protected)
    return places


def check_not_protected(path: Path, *, option: str = "--force", protected: Iterable[Path | str] = ()) -> None:
    """`KneuronError` (nothing deleted) when ``path`` is ``/``, the home or current folder, a ``protected`` folder,
    or a parent of one of them."""
    target = path.expanduser().resolve()
    for name, place in _places(protected):
        resolved = place.expanduser().resolve()
        if resolved == target or resolved.is_relative_to(target):
            what = "is" if resolved == target else "contains"
            raise KneuronError(f"{option} refuses to replace {path}: it {what} {name}; nothing was deleted")


def check_replaceable(path: Path, *, marker: str, is_ours: Callable[[Path], bool], option: str = "--force",
                      protected: Iterable[Path | str] = ()) -> None:
    """`KneuronError` (nothing deleted) unless the existing, non-empty folder ``path`` may be replaced."""
    check_not_protected(path, option=option, protected=protected)
    target = path.expanduser().resolve()
    if not is_ours(target / marker):
        raise KneuronError(f"{option} replaces only an earlier output of this command, and {path} has no valid "
                           f"{marker}; nothing was deleted")


def json_format_is(value: object) -> Callable[[Path], bool]:
    """An ``is_ours`` for markers that are JSON objects whose ``format`` is ``value``."""
    def check(path: Path) -> bool:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("format") == value
    return check
