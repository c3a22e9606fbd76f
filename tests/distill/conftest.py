"""Distill tests run many small tensor ops: one intra-op thread avoids OpenMP oversubscription on shared CI cores
(measured here: a 4000-element op took 5 ms with 2 threads on a loaded 2-core machine, 18 µs with 1)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
