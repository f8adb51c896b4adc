"""Shared fixture: small models on a shared 2-core machine run ~10x faster on one intra-op thread
(no OpenMP barrier waits against other processes). Import it into a folder's conftest to apply it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test; the previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
