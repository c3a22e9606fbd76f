"""Fixtures of the parity tests: the official 4Diffusion modules (`--official-src PATH`) and the tiny model pair.

Without `--official-src` every parity test is skipped (CI). With it, the official code's own dependencies (einops,
open_clip_torch 2.24.0, torchvision, pytorch_lightning, jaxtyping, accelerate) must be importable, e.g. from a
`pip install --target` folder on PYTHONPATH (benchmarks/parity/README.md); a missing one fails the fixture.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.parity.official import prepare_torchvision

# transformers imports torchvision for its image processors whenever it is installed; a CUDA-built wheel beside the
# CPU torch needs this before the test modules import stages.mvgen (a no-op without torchvision).
prepare_torchvision()


@pytest.fixture(scope="session")
def official(request: pytest.FixtureRequest):  # noqa: ANN201
    src = request.config.getoption("--official-src")
    if not src:
        pytest.skip("parity tests need --official-src PATH (a checkout of aejion/4Diffusion)")
    from benchmarks.parity.official import load_official

    return load_official(Path(src))


@pytest.fixture(scope="session")
def pair(official):  # noqa: ANN001, ANN201
    from benchmarks.parity.models import build_pair

    return build_pair(official)
