"""GPU checks of the full-size 4DM (run with RUN_GPU_TESTS=1 on a CUDA machine)."""

from __future__ import annotations

import pytest
import torch

from stages.mvgen.models import FourDMUNet


@pytest.mark.gpu
def test_full_size_unet_runs_one_sampling_step_at_4_views_by_8_frames():
    device = torch.device("cuda")
    torch.manual_seed(0)
    unet = FourDMUNet().to(device, torch.float16).eval()
    rows = 2 * 8 * 5  # CFG branches × frames × (4 views + reference)
    with torch.no_grad():
        eps = unet(
            torch.randn(rows, 4, 32, 32, device=device, dtype=torch.float16),
            torch.tensor(991, device=device),
            torch.randn(rows, 77, 1024, device=device, dtype=torch.float16),
            torch.randn(rows, 16, device=device, dtype=torch.float16),
            torch.randn(rows, 257, 1280, device=device, dtype=torch.float16),
            torch.randn(16, 4, 32, 32, device=device, dtype=torch.float16),
            8,
            5,
        )
    assert eps.shape == (rows, 4, 32, 32) and torch.isfinite(eps).all()
