"""PSNR and SSIM: known answers, and SSIM against two maintained implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.eval.metrics.psnr_ssim import PSNR_CAP_DB, compute_psnr, compute_ssim


def random_images(seed: int, n: int = 3, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, size, size, generator=g)
    # A correlated second image (smoothed and noised copy), so SSIM is far from both 0 and 1.
    b = (0.7 * torch.nn.functional.avg_pool2d(a, 3, 1, 1) + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(
        0, 1
    )
    return a, b


def test_identical_images_give_capped_flagged_psnr_and_ssim_one():
    a, _ = random_images(0)
    psnr, capped = compute_psnr(a, a.clone())
    assert torch.all(psnr == PSNR_CAP_DB) and torch.all(capped)
    assert torch.allclose(compute_ssim(a, a.clone()), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_psnr_of_a_known_noise_level(sigma):
    target = torch.full((2, 3, 16, 16), 0.5)
    signs = torch.where((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 == 0, 1.0, -1.0)
    pred = target + sigma * signs  # every pixel off by exactly ±sigma: MSE = sigma²
    psnr, capped = compute_psnr(pred, target)
    assert not capped.any()
    np.testing.assert_allclose(psnr.numpy(), -10 * math.log10(sigma**2), rtol=1e-5)


def test_psnr_just_below_the_cap_is_not_flagged():
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[0, 0, 0, 0] = 1e-3  # MSE 5e-9: 83 dB, a real value
    psnr, capped = compute_psnr(a, b)
    assert not capped.any() and psnr.item() == pytest.approx(10 * math.log10(192 / 1e-6))


@pytest.mark.parametrize("seed", [0, 1])
def test_reflect_padded_ssim_matches_torchmetrics(seed):
    tm = pytest.importorskip("torchmetrics.functional.image")
    a, b = random_images(seed)
    ours = compute_ssim(a, b, padding="reflect")
    ref = tm.structural_similarity_index_measure(
        a.double(), b.double(), data_range=1.0, reduction="none", gaussian_kernel=True, sigma=1.5, kernel_size=11
    )
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-6)
    assert 0.05 < float(ours.mean()) < 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_valid_ssim_matches_scikit_image(seed):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = random_images(seed, n=2)
    ours = compute_ssim(a, b)
    for i in range(2):
        ref = metrics.structural_similarity(
            a[i].permute(1, 2, 0).double().numpy(),
            b[i].permute(1, 2, 0).double().numpy(),
            data_range=1.0,
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="smaller than the 11 px"):
        compute_ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
