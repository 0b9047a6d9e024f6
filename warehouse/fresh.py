"""Undo the creation of a warehouse folder that never received a batch (a step that failed before storing).

A command that made the folder itself removes it again when it fails before its first commit, so a failed first
run leaves nothing behind. Only the files a new warehouse starts with are removed, and only when nothing else
is there: no command deletes what it did not create.
"""
from __future__ import annotations

import logging
from pathlib import Path

from kneuron.warehouse.layout import LOCK_FILE, MANIFEST_DIR, MARKER_FILE

logger = logging.getLogger(__name__)

#: what `Warehouse.open(create=True)` puts into a new folder (the manifest folder appears with the first batch)
STARTER_FILES = (MARKER_FILE, LOCK_FILE)


def remove_if_unused(root: Path) -> bool:
    """Remove the warehouse folder ``root`` when it holds only a new warehouse's starter files (an empty manifest
    folder at most); True when it was removed. Call only for a folder this process created."""
    if not root.is_dir():
        return False
    names = {p.name for p in root.iterdir()}
    manifest = root / MANIFEST_DIR
    if not names <= {*STARTER_FILES, MANIFEST_DIR} or (manifest.is_dir() and any(manifest.iterdir())):
        return False
    for name in STARTER_FILES:
        (root / name).unlink(missing_ok=True)
    if manifest.is_dir():
        manifest.rmdir()
    root.rmdir()
    logger.debug("removed the unused new warehouse folder %s", root)
    return True
