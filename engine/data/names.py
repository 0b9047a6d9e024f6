"""Category names as keys and as file names: refused when they cannot work, made safe when they become paths.

    check_concept_names(["cat", "Cat"])      # KneuronError: the two normalise to the same words
    name_folder(Path("out"), "..")           # out/%2E%2E: always inside ``out``, never longer than a file name may be

Names are compared by `kneuron.engine.eval.mentions.normalise` (NFKC, casefold, letters and digits of any script), the
form mention detection uses: a name that normalises to nothing can never be found in a caption, and two names
that normalise alike would be counted as one, so ingest refuses both before recording anything; so too a name
too long to be a warehouse partition directory.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from kneuron.engine.errors import KneuronError
from kneuron.engine.eval.mentions import normalise

#: the longest file name component written (bytes of UTF-8; most file systems allow 255)
MAX_NAME_BYTES = 200

#: the longest percent-encoded concept name: it becomes the warehouse directory ``concept=<name>`` (the
#: directory's value is what queries see, so it cannot be cut and hashed like other file names)
MAX_ENCODED_NAME = 240


def check_concept_names(names: Iterable[str], where: str = "") -> None:
    """`KneuronError` (one line) when a name normalises to no word, is too long to be a partition directory
    (`MAX_ENCODED_NAME`), or two names normalise alike."""
    seen: dict[tuple[str, ...], str] = {}
    suffix = f" in {where}" if where else ""
    for name in names:
        words = tuple(normalise(name.replace("_", " ")))
        if not words:
            raise KneuronError(f"concept name {name!r}{suffix} has no letter or digit, so no caption can mention "
                               "it; rename the category")
        encoded = len(quote(name, safe=""))
        if encoded > MAX_ENCODED_NAME:
            raise KneuronError(f"concept name {name[:40]!r}...{suffix} is too long for a warehouse directory "
                               f"({encoded} characters percent-encoded, at most {MAX_ENCODED_NAME}); rename the "
                               "category")
        if words in seen:
            raise KneuronError(f"concept names {seen[words]!r} and {name!r}{suffix} are the same words "
                               f"({' '.join(words)!r}) once normalised; rename one of the categories")
        seen[words] = name


def file_component(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` as one safe file name: percent-encoded (no ``/``, no leading dot, so never ``.`` or ``..``), and
    when too long, cut and ended by a hash of the whole name, so distinct names stay distinct."""
    safe = quote(name, safe=" ")
    if not safe or safe.startswith("."):
        safe = "%2E" + safe[1:] if safe else "%00"
    if len(safe.encode("utf-8")) <= max_bytes:
        return safe
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    cut = safe.encode("utf-8")[: max_bytes - 17].decode("utf-8", "ignore")
    escape = cut.rfind("%", len(cut) - 2)  # do not end inside a %XX escape
    return (cut[:escape] if escape >= 0 else cut) + "-" + digest


def name_folder(parent: Path, name: str) -> Path:
    """The folder for ``name`` inside ``parent`` (`file_component`); `KneuronError` if it would leave it."""
    folder = parent / file_component(name)
    if folder.resolve().parent != parent.resolve():
        raise KneuronError(f"name {name!r} does not make a folder inside {parent}")
    return folder
