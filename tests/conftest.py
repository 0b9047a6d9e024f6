"""Session-wide test settings."""
from __future__ import annotations

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
