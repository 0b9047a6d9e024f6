"""Hugging Face Hub ids (``org/name[@revision]``) as model references, resolved through ``huggingface_hub``.

A Hub id becomes the folder of its snapshot in the Hub cache (``HF_HUB_CACHE``, else huggingface_hub's default),
downloaded when missing unless ``HF_HUB_OFFLINE`` is set. Offline and not cached is one `KneuronError` line
naming the id and the command that fetches it. Only the weight format the loaders read is fetched: safetensors
when the repository has them (else PyTorch ``.bin``), never Flax/TF/ONNX/GGUF copies.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kneuron.engine.errors import KneuronError

logger = logging.getLogger(__name__)

#: ``org/name`` or ``org/name@revision`` (a branch, tag or commit); names as the Hub allows them
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[\w./-]+))?$")

#: weight copies in formats no kneuron loader reads
FOREIGN_WEIGHTS = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.gguf", "*.tflite", "*.mlmodel",
                   "original/*", "*.pth"]

_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubId:
    """A parsed Hub id: the repository and the revision (None: ``main``)."""

    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")

    def fetch_hint(self) -> str:
        """The shell command that puts this id into the cache."""
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"`hf download {self.repo}{revision}` (or `huggingface-cli download ...`) with network access"


def parse_hub_id(text: str) -> HubId | None:
    """``"org/name@rev"`` -> `HubId`; None when ``text`` cannot be a Hub id (a path such as ``./x``, ``a/b/c``)."""
    if text.startswith((".", "~", "/")):
        return None
    match = HUB_ID.match(text)
    if match is None:
        return None
    return HubId(match["repo"], match["revision"])


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set now (read at each call, not only when huggingface_hub was imported)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_cache() -> str:
    """The Hub cache folder in effect now: ``HF_HUB_CACHE``, else huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _skip_patterns(hub: HubId) -> list[str]:
    """What not to download: foreign formats, and ``*.bin`` weights when the repository has safetensors."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(hub.repo, revision=hub.revision)
    return FOREIGN_WEIGHTS + (["*.bin"] if any(name.endswith(".safetensors") for name in files) else [])


def hub_snapshot(hub: HubId, what: str = "model") -> Path:
    """The local folder of ``hub``'s snapshot: from the cache, or downloaded into it when online.

    `KneuronError` (one line): offline and not cached (naming how to fetch it), an unknown or gated repository,
    a revision that does not exist, a network failure.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache()
    offline = hub_offline()
    try:
        try:  # the cache first: no network call for a snapshot that is already there
            folder = snapshot_download(hub.repo, revision=hub.revision, cache_dir=cache, local_files_only=True)
            logger.debug("%s %s: cached snapshot %s", what, hub, folder)
            return Path(folder)
        except LocalEntryNotFoundError:
            if offline:
                raise
        logger.info("%s %s: downloading into the Hugging Face cache %s", what, hub, cache)
        folder = snapshot_download(hub.repo, revision=hub.revision, cache_dir=cache,
                                   ignore_patterns=_skip_patterns(hub))
        return Path(folder)
    except LocalEntryNotFoundError:
        raise KneuronError(f"{what} {hub}: not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set; "
                           f"fetch it first: {hub.fetch_hint()}") from None
    except GatedRepoError:
        raise KneuronError(f"{what} {hub}: gated on the Hugging Face Hub; accept its terms on the model page "
                           f"and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise KneuronError(f"{what} {hub}: no such repository on the Hugging Face Hub (or it is private)") from None
    except RevisionNotFoundError:
        raise KneuronError(f"{what} {hub}: the repository has no revision {hub.revision!r}") from None
    except Exception as exc:  # noqa: BLE001 - HTTP, OS and the network stack's own errors: one line each
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise KneuronError(f"{what} {hub}: cannot fetch from the Hugging Face Hub: {line}") from None
