"""Fixtures of the eval tests: random-weight networks of the real architectures, saved once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.eval.builders import write_tiny_weights


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`--weights` folder with tiny CLIP, random-weight LPIPS-VGG and I3D files (README layout)."""
    torch.set_num_threads(2)
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))
