"""Seeding: one call seeds Python, NumPy and torch; generators for code that takes an explicit one."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["seed_everything", "make_generator", "deterministic_algorithms"]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed `random`, NumPy's global RNG, torch (CPU and CUDA) and OpenCV.

    Args:
        seed: the seed.
        deterministic: also ask torch for deterministic algorithms (tests; slower on GPU).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        import cv2

        cv2.setRNGSeed(seed % 2**31)
    except ImportError:  # OpenCV is only needed by some stages' containers
        pass
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with `seed` on `device` (for samplers that take `generator=`)."""
    return torch.Generator(device=device).manual_seed(seed)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Inside the block, torch picks deterministic kernels when `enabled` (e.g. sort-based scatter-adds instead of
    multi-threaded or atomic ones), so reruns are bit-identical; the previous setting comes back afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
