"""The reference Gaussian rasteriser in pure torch, and our cameras as the rasteriser's matrices.

Conventions (the same as gsplat 1.5.3's `rasterization`, so `gsplat_backend` is a drop-in GPU kernel):
- cameras: `viewmats` world-to-camera with OpenCV axes (x right, y down, z forward), `Ks` pixel intrinsics; pixel
  (i, j) spans [i, i + 1) × [j, j + 1) and is evaluated at its centre (i + ½, j + ½). `camera_matrices` builds both
  from our `OrbitCamera` (OpenGL c2w), so a point lands on the pixel whose `cameras.camera_rays` ray goes through it;
- projection (EWA splatting, Zwicker et al. 2001; 3D Gaussian Splatting, Kerbl et al. 2023): Σ' = J W Σ Wᵀ Jᵀ with the
  perspective Jacobian J at the mean, whose x/z and y/z are clamped to 1.3× the half field of view (3DGS's guard
  against huge footprints of Gaussians beside the frustum), plus `eps2d` (0.3 px²) on the diagonal (a footprint of
  at least about one pixel); a Gaussian whose depth is ≤ `near_plane` is not drawn;
- compositing, per pixel, front to back by camera depth: α = min(0.999, o·exp(−½ dᵀ Σ'⁻¹ d)), skipped below 1/255;
  the pixel stops before the Gaussian that would take its transmittance to ≤ 1e-4; rgb = Σ T_i α_i c_i + T·bg,
  alpha = 1 − T, depth = Σ T_i α_i z_i / alpha (expected depth).
The reference evaluates, block by block of pixels, every Gaussian that can reach the block: exact and
differentiable by autograd, fine at the CPU path's sizes; gsplat's CUDA tiles give the same numbers on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.common.cameras import OrbitCamera, focal_length_px

__all__ = ["RasterOutput", "camera_matrices", "quaternion_to_rotation", "rasterize_torch", "ALPHA_MIN", "T_MIN"]

ALPHA_MIN = 1.0 / 255.0
"""Alphas below this are skipped (as 3DGS and gsplat)."""
T_MIN = 1e-4
"""A pixel stops before a Gaussian that would take its transmittance to this or less."""
_ALPHA_MAX = 0.999
_FRUSTUM_GUARD = 1.3
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass
class RasterOutput:
    """Images of B batches (times) × C cameras: rgb (B, C, H, W, 3) over the background, alpha (B, C, H, W, 1) and
    expected depth (B, C, H, W, 1) along the camera's axis (0 where alpha is 0)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


def camera_matrices(
    cameras: Sequence[OrbitCamera], size_px: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """(C, 4, 4) world-to-camera OpenCV viewmats and (C, 3, 3) intrinsics of square `size_px` renders, float32.

    Our c2w has OpenGL camera axes (stages/common/cameras.py); OpenCV's flip y and z: w2c = diag(1, −1, −1, 1)·c2w⁻¹.
    The principal point is the image centre and the focal length `focal_length_px(fov_y, size)`, as `camera_rays`.
    """
    c2w = torch.tensor([c.c2w for c in cameras], dtype=torch.float64)
    viewmats = _GL_TO_CV @ torch.linalg.inv(c2w)  # (C, 4, 4)
    ks = torch.zeros(len(cameras), 3, 3, dtype=torch.float64)
    ks[:, 0, 0] = ks[:, 1, 1] = torch.tensor([focal_length_px(c.fov_y_deg, size_px) for c in cameras])
    ks[:, 0, 2] = ks[:, 1, 2] = size_px / 2
    ks[:, 2, 2] = 1.0
    return viewmats.float().to(device), ks.float().to(device)


def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """(..., 4) quaternions (w, x, y, z), any norm → (..., 3, 3) rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def _project(
    means: Tensor, covars: Tensor, viewmat: Tensor, k: Tensor, size: int, eps2d: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Means (N, 3) and covariances (N, 3, 3) in the world → pixel means (N, 2), dilated 2D covariances (N, 2, 2),
    camera depths (N,)."""
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    cam = means @ rot.T + trans  # (N, 3)
    cov_c = rot @ covars @ rot.T  # (N, 3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    x, y, z = cam.unbind(-1)
    lim_x = (size / 2) / fx * _FRUSTUM_GUARD  # principal point at the centre: the two limits are equal
    lim_y = (size / 2) / fy * _FRUSTUM_GUARD
    tx = z * (x / z).clamp(-lim_x, lim_x)
    ty = z * (y / z).clamp(-lim_y, lim_y)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], -1).reshape(-1, 2, 3)
    cov2d = jac @ cov_c @ jac.transpose(1, 2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    return mean2d, cov2d, z


def _composite(
    mean2d: Tensor, cov2d: Tensor, opacity: Tensor, values: Tensor, size: int, tile: int
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted Gaussians at every pixel centre: Σ w·values (H·W, D), Σ w (H·W,).

    Pixels are evaluated a `tile` × `tile` block at a time against the Gaussians whose box can reach the block: the
    box of the ellipse where o·exp(−σ) ≥ 1/255, i.e. σ ≤ ln(255·o) (smaller alphas are skipped anyway), so the
    result is the dense one, exactly.
    """
    conic = torch.linalg.inv(cov2d)
    with torch.no_grad():
        reach = (2.0 * torch.log((opacity * 255.0).clamp(min=1.0))).sqrt()  # Mahalanobis radius of alpha 1/255
        half = reach[:, None] * torch.diagonal(cov2d, dim1=1, dim2=2).sqrt()  # (N, 2) half sides of the box
        low, high = mean2d.detach() - half, mean2d.detach() + half
    acc = values.new_zeros(size, size, values.shape[1])
    acc_w = values.new_zeros(size, size)
    for top in range(0, size, tile):
        for left in range(0, size, tile):
            bottom, right = min(top + tile, size), min(left + tile, size)
            hit = (high[:, 0] > left) & (low[:, 0] < right) & (high[:, 1] > top) & (low[:, 1] < bottom)
            ids = hit.nonzero().squeeze(1)  # keeps the depth order
            if ids.numel() == 0:
                continue
            ys = torch.arange(top, bottom, dtype=mean2d.dtype, device=mean2d.device) + 0.5
            xs = torch.arange(left, right, dtype=mean2d.dtype, device=mean2d.device) + 0.5
            py, px = torch.meshgrid(ys, xs, indexing="ij")
            pixels = torch.stack([px.reshape(-1), py.reshape(-1)], -1)  # (P, 2) row-major in the block
            dx = pixels[:, :1] - mean2d[ids, 0]  # (P, n)
            dy = pixels[:, 1:] - mean2d[ids, 1]
            q = conic[ids]
            sigma = 0.5 * (q[:, 0, 0] * dx * dx + q[:, 1, 1] * dy * dy) + q[:, 0, 1] * dx * dy
            alpha = (opacity[ids][None] * torch.exp(-sigma)).clamp(max=_ALPHA_MAX)
            alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
            after = torch.cumprod(1.0 - alpha, dim=1)  # transmittance after each Gaussian (P, n)
            before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=1)
            weights = alpha * before * (after > T_MIN)  # a pixel stops before the Gaussian that ends it
            shape = (bottom - top, right - left)
            acc[top:bottom, left:right] = (weights @ values[ids]).reshape(*shape, -1)
            acc_w[top:bottom, left:right] = weights.sum(1).reshape(shape)
    return acc.reshape(size * size, -1), acc_w.reshape(-1)


def rasterize_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colours: Tensor,
    viewmats: Tensor,
    ks: Tensor,
    size: int,
    *,
    background: Tensor,
    near_plane: float = 0.01,
    eps2d: float = 0.3,
    tile: int = 16,
) -> RasterOutput:
    """Render B batches of N Gaussians, each from C cameras (module docstring: conventions).

    Args:
        means: (B, N, 3) world positions (a batch per time).
        quats: (B, N, 4) or (N, 4) rotations (w, x, y, z), any norm.
        scales: (N, 3) standard deviations along the rotated axes (> 0).
        opacities: (N,) in [0, 1].
        colours: (N, 3) in [0, 1].
        viewmats: (C, 4, 4) world-to-camera, OpenCV axes (`camera_matrices`).
        ks: (C, 3, 3) pixel intrinsics.
        size: image side, pixels (square images).
        background: (3,) colour behind the Gaussians.
        near_plane: Gaussians at this camera depth or nearer are not drawn.
        eps2d: added to the diagonal of every 2D covariance, pixels².
        tile: side of the pixel blocks evaluated at a time (speed and memory only; `_composite`).
    """
    num_b = means.shape[0]
    quats = quats.expand(num_b, *quats.shape[-2:])
    rgb, alpha, depth = [], [], []
    for b in range(num_b):
        rot = quaternion_to_rotation(quats[b])
        m = rot * scales[:, None, :]  # R·S (N, 3, 3)
        covars = m @ m.transpose(1, 2)
        for c in range(viewmats.shape[0]):
            mean2d, cov2d, z = _project(means[b], covars, viewmats[c], ks[c], size, eps2d)
            order = torch.argsort(torch.where(z > near_plane, z, torch.full_like(z, torch.inf)), stable=True)
            order = order[z[order] > near_plane]  # front to back, the visible ones
            values = torch.cat([colours[order], z[order, None]], dim=-1)  # (n, 4): rgb and depth
            acc, acc_w = _composite(mean2d[order], cov2d[order], opacities[order], values, size, tile)
            rgb.append(acc[:, :3] + (1.0 - acc_w)[:, None] * background)
            alpha.append(acc_w[:, None])
            depth.append(acc[:, 3:] / acc_w[:, None].clamp(min=1e-10))
    shape = (num_b, viewmats.shape[0], size, size, -1)
    return RasterOutput(*(torch.stack(x).reshape(shape) for x in (rgb, alpha, depth)))
