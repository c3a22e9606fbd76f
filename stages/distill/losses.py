"""Losses of the 4D optimisation besides SDS: the anchor loss and the regularisers (spec §5.2–5.3).

- D-SSIM: `1 − SSIM` with an 11×11 Gaussian window (σ 1.5), C1 = 0.01², C2 = 0.03², zero padding, mean over the
  map, images in [0, 1]: the 3D Gaussian Splatting `ssim` that 4Diffusion's `loss_utils.py` copies.
- Anchor loss (paper eq. 11): λ1·LPIPS(I_r, I_a) + λ2·(1 − SSIM(I_r, I_a)), λ1 = 200, λ2 = 100 (the official
  config's 100/50, which `training_step` adds twice). Our addition, not the paper's: an optional pixel L1 term
  λ_l1·mean|I_r − I_a| (`loss_weights.anchor_l1`, 0 = the paper's loss), meant for runs without LPIPS, where
  D-SSIM alone hardly constrains colour and brightness.
- Sparsity ("L_opacity", λ4): mean √(o² + 0.01) over the SDS renders' opacities.
- Opaque ("L_sparse", λ5): binary entropy of the clamped opacity, BCE(o, o).
- Orientation (λ3): Σ w·relu(n·d)² over the renders, divided by the number of pixels with opacity > 0.
- Anchor target: the mvgen frame composited on white, then every pixel with alpha ≤ 0.5 set to the white
  background (the official dataset composites on load, `training_step` applies the binary mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stages.common.lpips import LPIPSVGG, load_lpips_vgg

__all__ = [
    "anchor_target",
    "ssim",
    "anchor_loss",
    "anchor_loss_terms",
    "anchor_l1",
    "sparsity_loss",
    "opaque_loss",
    "orientation_loss",
    "gaussian_window",
    "load_anchor_lpips",
]


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian (size,), float64 (cast to the images' dtype where used)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(img1: Tensor, img2: Tensor, *, window_size: int = 11, sigma: float = 1.5, full: bool = False) -> Tensor:
    """SSIM of two image batches (N, C, H, W) in [0, 1]; the mean over the map, or the (N, C, H, W) map if `full`."""
    channels = img1.shape[1]
    g = gaussian_window(window_size, sigma).to(img1)
    window = (g[:, None] @ g[None, :]).expand(channels, 1, window_size, window_size).contiguous()

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, window, padding=window_size // 2, groups=channels)

    mu1, mu2 = blur(img1), blur(img2)
    sigma1 = blur(img1 * img1) - mu1**2
    sigma2 = blur(img2 * img2) - mu2**2
    sigma12 = blur(img1 * img2) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * sigma12 + c2)) / ((mu1**2 + mu2**2 + c1) * (sigma1 + sigma2 + c2))
    return ssim_map if full else ssim_map.mean()


def anchor_target(rgba: np.ndarray) -> Tensor:
    """The anchor frame I_a (spec §5.2) of one uint8 (H, W, 4) straight-alpha RGBA frame: (3, H, W) float32 in [0, 1].

    `c = rgb·α + (1 − α)` (white), then `c·m + (1 − m)` with the binary mask m = α > 0.5: soft edges above half
    alpha keep their composited colour, the rest is the white background.
    """
    x = torch.from_numpy(np.ascontiguousarray(rgba)).float() / 255.0  # (H, W, 4)
    rgb, alpha = x[..., :3], x[..., 3:]
    mask = (alpha > 0.5).float()
    on_white = rgb * alpha + (1.0 - alpha)
    return (on_white * mask + (1.0 - mask)).permute(2, 0, 1).contiguous()  # (3, H, W)


def anchor_l1(render: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of two image batches (N, C, H, W): the optional pixel term of the anchor loss."""
    return (render - target).abs().mean()


def anchor_loss(
    render: Tensor,
    target: Tensor,
    lpips: LPIPSVGG,
    *,
    lpips_weight: float,
    dssim_weight: float,
    l1_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Paper eq. 11 on (N, 3, H, W) images in [0, 1], plus `l1_weight`·L1 when it is > 0 (our addition).

    Args:
        render: the anchor render (N, 3, H, W) in [0, 1], composited on white.
        target: the anchor video frames (N, 3, H, W) in [0, 1], composited on white.
        lpips: LPIPS-VGG.
        lpips_weight: λ1.
        dssim_weight: λ2.
        l1_weight: weight of the pixel L1 term; 0 leaves it out (the paper's loss).

    Returns:
        The weighted sum and the unweighted terms as floats (`anchor_lpips` when `lpips_weight` > 0, `anchor_l1`
        when `l1_weight` > 0): `anchor_loss_terms` with the terms read back to the host.
    """
    total, parts = anchor_loss_terms(
        render, target, lpips, lpips_weight=lpips_weight, dssim_weight=dssim_weight, l1_weight=l1_weight
    )
    return total, {k: float(v) for k, v in parts.items()}


def anchor_loss_terms(
    render: Tensor,
    target: Tensor,
    lpips: LPIPSVGG | None,
    *,
    lpips_weight: float,
    dssim_weight: float,
    l1_weight: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The trainer's anchor loss: `anchor_loss` with the unweighted terms as detached 0-d tensors (no host sync).

    The perceptual term is left out when `lpips_weight` is 0 (`lpips` may then be None), the L1 term when
    `l1_weight` is 0 (the loss and its gradients are then exactly the paper's eq. 11).

    Args:
        render: the anchor render (N, 3, H, W) in [0, 1], composited on white.
        target: the anchor video frames (N, 3, H, W) in [0, 1], composited on white.
        lpips: LPIPS-VGG, or None when `lpips_weight` is 0.
        lpips_weight: λ1.
        dssim_weight: λ2.
        l1_weight: weight of the pixel L1 term (our addition, `loss_weights.anchor_l1`).

    Returns:
        The weighted sum and the unweighted terms (`anchor_lpips`, `anchor_dssim`, `anchor_l1`, each only when it
        is computed) as detached 0-d tensors.
    """
    dssim = 1.0 - ssim(render, target)
    parts = {"anchor_dssim": dssim.detach()}
    total = dssim_weight * dssim
    if lpips_weight > 0:
        if lpips is None:
            raise ValueError("anchor_loss_terms: lpips_weight > 0 needs the LPIPS network")
        perceptual = lpips(render, target).mean()
        parts = {"anchor_lpips": perceptual.detach(), **parts}
        total = lpips_weight * perceptual + total
    if l1_weight > 0:
        l1 = anchor_l1(render, target)
        parts["anchor_l1"] = l1.detach()
        total = total + l1_weight * l1
    return total, parts


def sparsity_loss(opacity: Tensor) -> Tensor:
    """mean √(o² + 0.01), threestudio `loss_sparsity`."""
    return (opacity.pow(2) + 0.01).sqrt().mean()


def opaque_loss(opacity: Tensor) -> Tensor:
    """Binary entropy of the opacity clamped to [1e-3, 1 − 1e-3], threestudio `loss_opaque` (BCE(o, o))."""
    o = opacity.clamp(1e-3, 1.0 - 1e-3)
    return F.binary_cross_entropy(o, o)


def orientation_loss(orient: Tensor, opacity: Tensor) -> Tensor:
    """Σ per-ray orientation terms / #(opacity > 0), threestudio `loss_orient`."""
    return orient.sum() / (opacity > 0).sum().clamp(min=1)


def load_anchor_lpips(lpips_dir: Path) -> LPIPSVGG:
    """LPIPS-VGG as the official anchor loss uses it (`lpipsPyTorch`, spec §5.2): [0, 1] images fed without
    rescaling, lpips' channel normalisation; the backbone's widths are taken from the file.

    Raises:
        StageError: a file of `lpips_dir` is missing (names it) or does not hold LPIPS-VGG weights.
    """
    return load_lpips_vgg(lpips_dir, input_range="zero_to_one_unscaled", channel_norm="lpips", widths=None)
