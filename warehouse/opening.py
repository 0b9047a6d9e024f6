"""Open a warehouse by location: a local directory (`Warehouse.open`) or a URI (`kneuron.warehouse.remote`).

    with open_warehouse("kneuron-warehouse", create=True) as wh: ...   # the writer of a local directory
    wh = open_warehouse("s3://bucket/wh")                               # a reader through pyarrow's file systems

The one place that dispatches on the location, above both kinds of warehouse, so neither imports the other.
"""
from __future__ import annotations

import os

from kneuron.warehouse.layout import DEFAULT_PATH, ENV_VAR
from kneuron.warehouse.remote import open_uri
from kneuron.warehouse.store import Warehouse, is_uri


def open_warehouse(path: str | os.PathLike[str] | None = None, *, create: bool = False) -> Warehouse:
    """The warehouse at ``path`` (default: ``$KNEURON_WAREHOUSE`` or ``./kneuron-warehouse``).

    A URI (``file://``, ``s3://``, ``gs://``, ...) is read through pyarrow (`kneuron.warehouse.remote.open_uri`);
    anything else is a local directory (`Warehouse.open`, whose docstring lists the errors and ``create``).
    """
    location = os.fspath(path) if path is not None else os.environ.get(ENV_VAR) or DEFAULT_PATH
    if is_uri(location):
        return open_uri(location, create=create)
    return Warehouse.open(location, create=create)
