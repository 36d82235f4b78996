"""Pytest fixtures fer-core lends to every test session (a ``pytest11`` entry point), so that
the core's and the plugins' tests, and those of plugins made with ``fer plugin new``, share them:

    pytestmark = pytest.mark.usefixtures("one_thread")   # every test of the module on one thread
"""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """torch on one thread: tiny tensors gain nothing from threads, and on a busy CPU spinning threads cost seconds."""
    import torch  # here, not at import: pytest loads this module in every session

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)
