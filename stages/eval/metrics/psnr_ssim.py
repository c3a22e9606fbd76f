"""PSNR and SSIM of images on white, data range 1 (spec §6; Wang et al. 2004 for SSIM).

SSIM uses a Gaussian window (11 px, σ 1.5), the constants K1 = 0.01 and K2 = 0.03 and population (not sample)
statistics, averaged over channels and pixels. Borders differ between maintained implementations, so both are
offered: `padding="valid"` averages only where the window fits (Wang et al. 2004; scikit-image's
`structural_similarity(gaussian_weights=True, use_sample_covariance=False)`; torchmetrics before it dropped
the crop), `padding="reflect"` reflect-pads by half a window and averages the whole image (torchmetrics 1.9's
`structural_similarity_index_measure`). The tests compare each with its reference. The window is applied as
two 1-D passes (the Gaussian is separable), in float64.

PSNR of identical images is infinite. JSON, MLflow and means over frames cannot carry that, so the MSE is
floored at 1e-10, which caps PSNR at `PSNR_CAP_DB` = 100 dB, and every capped frame is flagged.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

SsimPadding = Literal["valid", "reflect"]

__all__ = ["PSNR_CAP_DB", "SsimPadding", "compute_psnr", "compute_ssim", "gaussian_window"]

PSNR_CAP_DB = 100.0
"""PSNR reported for an MSE of at most 1e-10 on [0, 1] images (i.e. identical images)."""
_MSE_FLOOR = 10.0 ** (-PSNR_CAP_DB / 10.0)


def compute_psnr(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Peak signal-to-noise ratio per image, data range 1.

    Args:
        pred: (N, C, H, W) images in [0, 1].
        target: (N, C, H, W) images in [0, 1].

    Returns:
        (PSNR in dB capped at `PSNR_CAP_DB`, float64 (N,); whether the cap applied, i.e. the images were
        identical, bool (N,)).
    """
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(dim=1)
    capped = mse <= _MSE_FLOOR
    psnr = -10.0 * torch.log10(mse.clamp_min(_MSE_FLOOR))
    return psnr, capped


def gaussian_window(kernel_size: int, sigma: float) -> Tensor:
    """(K,) normalised 1-D Gaussian of `kernel_size` taps centred on the middle one, float64."""
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _band(window: Tensor, size: int) -> Tensor:
    """(size-K+1, size) matrix whose row i holds the window at columns i..i+K-1: a valid 1-D filter as a matmul."""
    k = window.numel()
    band = torch.zeros(size - k + 1, size, dtype=window.dtype, device=window.device)
    for i in range(k):
        band.diagonal(i).copy_(window[i].expand(size - k + 1))
    return band


def _filter(x: Tensor, window: Tensor) -> Tensor:
    """Valid-region Gaussian filter of every channel, a vertical then a horizontal 1-D pass.

    (N, C, H, W) → (N, C, H-K+1, W-K+1). Written as banded matrix products, which run at BLAS speed in float64
    (grouped float64 convolutions are ~8× slower on CPU).
    """
    return _band(window, x.shape[-2]) @ x @ _band(window, x.shape[-1]).T


def compute_ssim(
    pred: Tensor,
    target: Tensor,
    *,
    kernel_size: int = 11,
    sigma: float = 1.5,
    padding: SsimPadding = "valid",
) -> Tensor:
    """Structural similarity per image, data range 1 (module docstring).

    Args:
        pred: (N, C, H, W) images in [0, 1].
        target: (N, C, H, W) images in [0, 1]; both at least `kernel_size` pixels on each side.
        kernel_size: Gaussian window side, odd.
        sigma: Gaussian window standard deviation, pixels.
        padding: `valid` or `reflect` borders (module docstring).

    Returns:
        (N,) float64 SSIM in [-1, 1], 1 for identical images.
    """
    if min(pred.shape[-2:]) < kernel_size:
        raise ValueError(f"images of {tuple(pred.shape[-2:])} px are smaller than the {kernel_size} px SSIM window")
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    x, y = pred.double(), target.double()
    if padding == "reflect":
        half = (kernel_size - 1) // 2
        x = F.pad(x, (half, half, half, half), mode="reflect")
        y = F.pad(y, (half, half, half, half), mode="reflect")
    window = gaussian_window(kernel_size, sigma).to(x.device)
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x**2
    var_y = _filter(y * y, window) - mu_y**2
    cov_xy = _filter(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)
