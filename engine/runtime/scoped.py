"""Process state changed only for the length of a ``with`` block, and restored afterwards.

Library code never leaves a change to the environment, the global torch RNG or another library's logger behind;
it goes through these context managers, which put back exactly what they found.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def environ(**values: str) -> Iterator[None]:
    """Environment variables set to ``values`` (only those not set already: a user's setting wins) within the
    block; afterwards the ones this block set are removed again."""
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """The logger ``name`` at ``level`` within the block; its own level restored afterwards."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Torch's global RNG (CPU, and every CUDA device already initialised) seeded with ``seed`` within the block;
    the states it had before restored afterwards, so callers' random streams do not move."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def transformers_progress_off() -> Iterator[None]:
    """Transformers' progress bars off within the block (as they were afterwards)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
