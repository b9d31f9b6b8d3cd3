"""Unit tests run tiny models: one intra-op thread is faster for them than OpenMP's two, and
immune to the several-fold slowdown OpenMP suffers when the two cores are shared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
