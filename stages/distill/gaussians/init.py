"""Where the Gaussians start: the visual hull of the anchor videos' masks at the first frame, else the blob sphere.

A point of the scene box is inside the visual hull when every anchor view's foreground mask (alpha > 0.5) at frame 0
covers its projection (a point outside a view's image is outside). With 4–8 views around the subject the hull is a
coarse but correct envelope, so the fit starts with Gaussians where the subject is instead of carving it out of a
ball (as the NeRF's density blob must). Colours start as the mean of the views' pixels at the point (occlusion is
ignored: the fit corrects it); one isotropic size, half the spacing of N points spread over the hull's volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stages.common.cameras import OrbitCamera
from stages.distill.gaussians.rasterize import camera_matrices

__all__ = ["GaussianInit", "visual_hull_init"]

_CANDIDATES_PER_GAUSSIAN = 8
_ROUNDS = 16


@dataclass
class GaussianInit:
    """means (N, 3), colours (N, 3) in [0, 1], one isotropic standard deviation `scale`, and whether the hull was
    found (`from_hull`; False: the blob-sphere fallback)."""

    means: Tensor
    colours: Tensor
    scale: float
    from_hull: bool


def _project_pixels(points: Tensor, cameras: Sequence[OrbitCamera], size: int) -> tuple[Tensor, Tensor]:
    """Pixel indices (A, P) row-major and in-image flags (A, P) of points (P, 3) in each camera's square image."""
    viewmats, ks = camera_matrices(cameras, size)
    cam = torch.einsum("aij,pj->api", viewmats[:, :3, :3], points) + viewmats[:, None, :3, 3]  # (A, P, 3)
    z = cam[..., 2]
    u = ks[:, None, 0, 0] * cam[..., 0] / z + ks[:, None, 0, 2]
    v = ks[:, None, 1, 1] * cam[..., 1] / z + ks[:, None, 1, 2]
    inside = (z > 0) & (u >= 0) & (u < size) & (v >= 0) & (v < size)
    col, row = u.floor().clamp(0, size - 1).long(), v.floor().clamp(0, size - 1).long()
    return row * size + col, inside


def visual_hull_init(
    count: int,
    *,
    masks: Tensor | None,
    videos: Tensor,
    cameras: Sequence[OrbitCamera],
    bbox_radius: float,
    blob_radius: float,
    generator: torch.Generator,
) -> GaussianInit:
    """`count` starting Gaussians (module docstring), every draw from `generator` (CPU).

    Args:
        masks: (A, F, 1, H, W) foreground in [0, 1] of the anchor videos, or None (the fallback).
        videos: (A, F, 3, H, W) the anchor videos on white, in [0, 1].
        cameras: the A anchor cameras.
        bbox_radius: half side of the scene box the hull is searched in.
        blob_radius: radius of the fallback sphere.
    """
    size = videos.shape[-1]
    kept: list[Tensor] = []
    tried = found = 0
    if masks is not None:
        mask0 = masks[:, 0, 0].reshape(len(cameras), -1) > 0.5  # (A, H·W) frame 0
        for _ in range(_ROUNDS):
            points = (torch.rand(_CANDIDATES_PER_GAUSSIAN * count, 3, generator=generator) * 2 - 1) * bbox_radius
            index, inside = _project_pixels(points, cameras, size)
            hull = (inside & torch.gather(mask0, 1, index)).all(0)
            kept.append(points[hull])
            tried, found = tried + len(points), found + int(hull.sum())
            if found >= count:
                break
    if found > 0:
        points = torch.cat(kept)
        if found < count:  # a thin hull: repeat points, each moved by a fraction of the spacing
            extra = points[torch.randint(found, (count - found,), generator=generator)]
            points = torch.cat([points, extra + 0.01 * bbox_radius * torch.randn(extra.shape, generator=generator)])
        means = points[:count]
        volume = (2 * bbox_radius) ** 3 * found / tried
    else:
        direction = torch.randn(count, 3, generator=generator)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        means = direction * blob_radius * torch.rand(count, 1, generator=generator) ** (1 / 3)  # uniform in the ball
        volume = 4 / 3 * torch.pi * blob_radius**3
    index, inside = _project_pixels(means, cameras, size)
    frame0 = videos[:, 0].reshape(len(cameras), 3, -1)  # (A, 3, H·W)
    seen = torch.gather(frame0, 2, index[:, None].expand(-1, 3, -1))  # (A, 3, N)
    weight = inside[:, None].float()
    colours = (seen * weight).sum(0) / weight.sum(0).clamp(min=1)
    colours = torch.where(weight.sum(0) > 0, colours, torch.full_like(colours, 0.5)).T  # (N, 3)
    scale = 0.5 * (volume / count) ** (1 / 3)
    return GaussianInit(means=means.contiguous(), colours=colours.contiguous(), scale=scale, from_hull=found > 0)
