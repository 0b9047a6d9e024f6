"""A Hugging Face Hub cache folder filled by hand from a local model folder, in the layout huggingface_hub reads
(``models--org--name/{blobs,snapshots/<commit>,refs/<branch>}``, snapshot files linking to content-addressed
blobs), so Hub ids resolve offline in tests."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_to_hub_cache(cache: Path, repo: str, folder: Path, commit: str | None = None,
                     branch: str | None = "main") -> str:
    """Put every file of ``folder`` into ``cache`` as the snapshot ``commit`` of ``repo`` (default: a commit hash
    derived from the files), pointed to by ``refs/<branch>`` unless ``branch`` is None; returns the commit."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    commit = commit or digest.hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    for path in files:
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink():
            target.symlink_to(os.path.relpath(blob, target.parent))
    if branch is not None:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / branch).write_text(commit)
    return commit
