"""Session-wide test settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models: one thread is faster than several on a shared 2-core machine, and CPU results then do not
    depend on the machine's core count (the kill -9 resume test compares two processes bit for bit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the report / run-reader test world
@pytest.fixture(scope="module")
def report_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny shapes world for the report, run-reader and neuron-command tests (`tests.helpers.report_fixtures`)."""
    from tests.helpers.report_fixtures import make_world

    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def report_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny MiniGPT-4 folder for the same tests."""
    from tests.helpers.report_fixtures import make_model

    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def report_full(tmp_path_factory: pytest.TempPathFactory, report_world: Path, report_model_dir: Path) -> Path:
    """A warehouse with a run, its sets, an evaluation with scores and stored random sets (one per module)."""
    from tests.helpers.report_fixtures import build

    return build(tmp_path_factory.mktemp("wh") / "full", report_world, report_model_dir, with_scores=True,
                 with_random=True)


@pytest.fixture(autouse=True, scope="session")
def private_digest_cache(tmp_path_factory: pytest.TempPathFactory):
    """Verified-file stamps (`kneuron.warehouse.digests`) go to a temporary folder, not the user's cache."""
    import os

    before = os.environ.get("KNEURON_CACHE_DIR")
    os.environ["KNEURON_CACHE_DIR"] = str(tmp_path_factory.mktemp("kneuron-cache"))
    yield
    if before is None:
        os.environ.pop("KNEURON_CACHE_DIR", None)
    else:
        os.environ["KNEURON_CACHE_DIR"] = before
