from __future__ import annotations

import math

import torch

from stages.common.cameras import OrbitCamera
from stages.distill.cameras import Rays, camera_rays, sample_sds_views
from stages.distill.fields import FieldOutputs
from stages.distill.renderer import OccupancyGrid, render_rays, step_size_for

SIGMA, RADIUS, COLOUR = 3.0, 0.5, (0.2, 0.4, 0.6)


class ConstantSphere:
    """Density SIGMA inside a ball of radius RADIUS, zero outside; a constant colour; ignores time."""

    def density(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.where(x.norm(dim=-1) < RADIUS, SIGMA, 0.0)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> FieldOutputs:
        return FieldOutputs(self.density(x, t), torch.tensor(COLOUR).expand(x.shape[0], 3))


def side_rays(offsets: torch.Tensor) -> Rays:
    """Rays along +x at heights `offsets` above the sphere's centre."""
    n = offsets.shape[0]
    origins = torch.stack([torch.full((n,), -2.0), offsets, torch.zeros(n)], dim=-1)
    return Rays(origins, torch.tensor([1.0, 0.0, 0.0]).expand(n, 3).contiguous())


def full_grid(resolution: int = 16) -> OccupancyGrid:
    grid = OccupancyGrid(resolution, 1.0, 0.95, 0.01, 256)
    grid.binary.fill_(True)
    return grid


def test_constant_density_sphere_gives_the_analytic_opacity():
    offsets = torch.linspace(0.0, 0.6, 13)
    step = step_size_for(1024)
    out = render_rays(
        ConstantSphere(),
        side_rays(offsets),
        torch.zeros(13),
        full_grid(),
        step_size=step,
        alpha_threshold=0.0,
        early_stop_eps=0.0,
    )
    chord = 2 * torch.sqrt((RADIUS**2 - offsets**2).clamp(min=0))
    torch.testing.assert_close(out.opacity, 1 - torch.exp(-SIGMA * chord), rtol=0, atol=2 * SIGMA * step)
    want_rgb = out.opacity[:, None] * torch.tensor(COLOUR) + (1 - out.opacity[:, None])  # composited on white
    torch.testing.assert_close(out.rgb, want_rgb)


def test_occupancy_grid_and_early_stop_skip_only_empty_or_hidden_samples():
    offsets = torch.linspace(0.0, 0.45, 10)
    step = step_size_for(256)
    rays, times = side_rays(offsets), torch.zeros(10)
    dense = render_rays(
        ConstantSphere(), rays, times, full_grid(), step_size=step, alpha_threshold=0.0, early_stop_eps=0.0
    )
    grid = OccupancyGrid(16, 1.0, 0.95, 0.01, 256)
    generator = torch.Generator().manual_seed(0)
    for i in range(30):  # one jittered point per cell and update: the EMA max finds the cells the ball grazes
        grid.update(i, lambda x: ConstantSphere().density(x, x[:, 0]), step, generator)
    assert 0 < grid.binary.float().mean() < 0.2  # the ball's cells only
    pruned = render_rays(
        ConstantSphere(), rays, times, grid, step_size=step, alpha_threshold=0.01, early_stop_eps=1e-4
    )
    assert pruned.num_samples < dense.num_samples / 2
    torch.testing.assert_close(pruned.opacity, dense.opacity, rtol=0, atol=2e-3)


def test_stratified_marching_is_reproducible_and_unbiased():
    offsets = torch.zeros(2000)
    step = step_size_for(64)
    out_a = render_rays(
        ConstantSphere(),
        side_rays(offsets),
        torch.zeros(2000),
        full_grid(),
        step_size=step,
        alpha_threshold=0.0,
        early_stop_eps=0.0,
        generator=torch.Generator().manual_seed(1),
    )
    out_b = render_rays(
        ConstantSphere(),
        side_rays(offsets),
        torch.zeros(2000),
        full_grid(),
        step_size=step,
        alpha_threshold=0.0,
        early_stop_eps=0.0,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(out_a.opacity, out_b.opacity)
    assert abs(out_a.opacity.mean().item() - (1 - math.exp(-SIGMA * 2 * RADIUS))) < 5e-3


def test_camera_rays_look_at_the_origin_through_the_image_centre():
    cam = OrbitCamera.from_angles(0, 30.0, 10.0, 1.1, 45.0)
    rays = camera_rays(cam, 4)
    centre = rays.directions.reshape(4, 4, 3)[1:3, 1:3].mean((0, 1))
    c2w = torch.tensor(cam.c2w, dtype=torch.float32)
    torch.testing.assert_close(centre / centre.norm(), -c2w[:3, 3] / c2w[:3, 3].norm(), atol=1e-6, rtol=0)
    top_left = rays.directions[0] @ c2w[:3, :3]  # camera space: up-left, looking down −z
    assert top_left[0] < 0 and top_left[1] > 0 and top_left[2] < 0
    # The top edge's centre is half the field of view above the optical axis.
    top = (rays.directions.reshape(4, 4, 3)[0, 1:3].mean(0) @ c2w[:3, :3]).tolist()
    assert abs(math.atan2(top[1], -top[2]) - math.atan(0.75 * math.tan(math.radians(22.5)))) < 1e-2


def test_sds_views_are_orthogonal_with_a_shared_elevation():
    views = sample_sds_views(
        torch.Generator().manual_seed(0),
        num_views=4,
        elevation_min_deg=0.0,
        elevation_max_deg=5.0,
        radius=1.1,
        fov_y_deg=45.0,
    )
    gaps = [(b - a) % 360 for a, b in zip(views.azimuths_deg, views.azimuths_deg[1:], strict=False)]
    assert all(abs(g - 90) < 1e-9 for g in gaps)
    assert 0.0 <= views.elevation_deg <= 5.0 and -180 <= views.azimuths_deg[0] < -90


def _whole_box_march(rays, occupancy, step_size, generator):
    """The plain march every step of the box diagonal (the reference the bounded march must reproduce)."""
    from stages.distill.renderer.marching import _ray_box

    near, far = _ray_box(rays, occupancy.bbox_radius)
    if generator is not None:
        near = near + torch.rand(near.shape, generator=generator) * step_size
    max_steps = int(math.ceil(2.0 * math.sqrt(3.0) * occupancy.bbox_radius / step_size)) + 1
    t_start = near[:, None] + torch.arange(max_steps, dtype=near.dtype)[None] * step_size
    mid = t_start + 0.5 * step_size
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * mid[..., None]
    keep = (mid < far[:, None]) & occupancy.occupied(points.reshape(-1, 3)).reshape(mid.shape)
    ray_idx, step_idx = torch.nonzero(keep, as_tuple=True)
    return ray_idx, t_start[ray_idx, step_idx]


def test_march_bounded_by_the_occupied_cells_keeps_exactly_the_whole_box_samples():
    from stages.distill.renderer.marching import _march

    torch.manual_seed(3)
    camera = OrbitCamera.from_angles(0, 30.0, 15.0, 2.0, 50.0)
    rays = camera_rays(camera, 24)
    step = step_size_for(64)
    for pattern in ("blob", "scattered", "corner", "empty"):
        grid = OccupancyGrid(8, 1.0, 0.95, 0.01, 0)
        cells = grid.binary.view(8, 8, 8)
        if pattern == "blob":
            cells[2:5, 3:6, 2:6] = True
        elif pattern == "scattered":
            cells.view(-1)[torch.randperm(512)[:20]] = True
        elif pattern == "corner":
            cells[7, 7, 7] = cells[0, 0, 0] = True
        for stratified in (False, True):
            got = _march(rays, grid, step, torch.Generator().manual_seed(5) if stratified else None, chunk=1000)
            want = _whole_box_march(rays, grid, step, torch.Generator().manual_seed(5) if stratified else None)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (pattern, stratified)
            assert (got[0].numel() == 0) == (pattern == "empty")
