"""The installed kneuron package version ("unknown" in a source tree that is not installed)."""

from __future__ import annotations

import importlib.metadata


def kneuron_version() -> str:
    """The version of the installed ``kneuron`` distribution, or "unknown" when it is not installed."""
    try:
        return importlib.metadata.version("kneuron")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"
