"""Cameras of the distill stage (spec §4.3): random SDS views, the fixed anchor/eval views, and their rays.

Our convention (stages/common/cameras.py): z-up world, OpenGL c2w, degrees, azimuth 0 = the input view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from stages.common.cameras import OrbitCamera, focal_length_px

if TYPE_CHECKING:
    from stages.distill.config import CameraConfig

__all__ = ["Rays", "SDSViews", "sample_sds_views", "draw_sds_views", "camera_rays", "pixel_directions"]


@dataclass
class Rays:
    """origins, directions: (N, 3) float32, unit directions, world coordinates."""

    origins: Tensor
    directions: Tensor


@dataclass
class SDSViews:
    """One iteration's SDS cameras: V views 360/V degrees apart at a shared elevation."""

    azimuths_deg: list[float]
    elevation_deg: float
    cameras: list[OrbitCamera]


def sample_sds_views(
    generator: torch.Generator,
    *,
    num_views: int,
    elevation_min_deg: float,
    elevation_max_deg: float,
    radius: float,
    fov_y_deg: float,
) -> SDSViews:
    """threestudio's multi-view random cameras (spec §4.3).

    Elevation: with probability 1/2 uniform in degrees, else uniform on the sphere (inverse CDF of sin) over the
    same range. Azimuths: `((u + k)/V)·360 − 180`, k = 0..V−1, one u ~ U(0, 1) per iteration.
    """
    u_choice, u_elev, u_az = torch.rand(3, generator=generator).tolist()
    lo, hi = elevation_min_deg, elevation_max_deg
    if u_choice < 0.5:
        elevation = u_elev * (hi - lo) + lo
    else:
        p0, p1 = (lo + 90.0) / 180.0, (hi + 90.0) / 180.0
        elevation = math.degrees(math.asin(2.0 * (u_elev * (p1 - p0) + p0) - 1.0))
    azimuths = [((u_az + k) / num_views) * 360.0 - 180.0 for k in range(num_views)]
    cameras = [OrbitCamera.from_angles(k, a, elevation, radius, fov_y_deg) for k, a in enumerate(azimuths)]
    return SDSViews(azimuths_deg=azimuths, elevation_deg=elevation, cameras=cameras)


def draw_sds_views(generator: torch.Generator, cameras: CameraConfig) -> SDSViews:
    """`sample_sds_views` with the stage config's `cameras` section (what each training step draws)."""
    return sample_sds_views(
        generator,
        num_views=cameras.num_views,
        elevation_min_deg=cameras.elevation_min_deg,
        elevation_max_deg=cameras.elevation_max_deg,
        radius=cameras.radius,
        fov_y_deg=cameras.fov_y_deg,
    )


def camera_rays(camera: OrbitCamera, size_px: int, device: torch.device | str = "cpu") -> Rays:
    """One ray per pixel centre of a square `size_px` image, row-major from the top-left pixel.

    Directions in camera space are `((i + ½ − W/2)/f, −(j + ½ − H/2)/f, −1)` (threestudio
    `get_ray_directions`, OpenGL axes), rotated by the c2w and normalised.
    """
    focal = focal_length_px(camera.fov_y_deg, size_px)
    c2w = torch.tensor(camera.c2w, dtype=torch.float32, device=device)
    centres = torch.arange(size_px, dtype=torch.float32, device=device) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")  # (H, W) each
    dirs = pixel_directions(c2w[:3, :3], focal, size_px, x.reshape(-1), y.reshape(-1))  # (H·W, 3)
    return Rays(origins=c2w[:3, 3].expand_as(dirs).contiguous(), directions=dirs)


def pixel_directions(rotation: Tensor, focal: Tensor | float, size_px: int, x: Tensor, y: Tensor) -> Tensor:
    """Unit world directions (N, 3) of the rays through image points (x, y) (N,), in pixels from the top-left
    corner of a square `size_px` image (pixel i spans [i, i + 1)): `((x − W/2)/f, −(y − H/2)/f, −1)` in camera
    space (OpenGL axes) rotated by `rotation`, the c2w's (3, 3) or one (N, 3, 3) per point with `focal` (N,)."""
    local = torch.stack([(x - size_px / 2) / focal, -(y - size_px / 2) / focal, -torch.ones_like(x)], dim=-1)
    dirs = local @ rotation.T if rotation.dim() == 2 else torch.einsum("nij,nj->ni", rotation, local)
    return dirs / dirs.norm(dim=-1, keepdim=True)
