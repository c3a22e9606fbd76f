"""Ray marching and pruning: the packed samples the compositing evaluates (steps 1–3 of `stages.distill.renderer`).

1. each ray is clipped to the scene box and marched with a fixed step `2·√3·R / num_samples_per_ray` from a
   random per-ray offset (stratified) or from the box entry (deterministic renders);
2. samples whose midpoint falls in an empty occupancy cell are skipped;
3. a no-grad density pass drops samples with alpha < `alpha_threshold` or transmittance < `early_stop_eps`
   (nerfacc's `render_visibility_from_density`, i.e. early ray termination).

`early_stop_block` > 0 is an exact speed option (same kept samples, same values): step 3 evaluates each ray's
candidates that many at a time, in order, and stops evaluating a ray once its transmittance is below
`early_stop_eps` (every later sample of it would be dropped). 0 evaluates every candidate at once (the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from stages.distill.cameras import Rays
from stages.distill.fields import FieldOutputs
from stages.distill.host import to_device
from stages.distill.renderer.occupancy import OccupancyGrid

__all__ = ["RadianceField", "RaySamples", "sample_rays", "step_size_for", "midpoints", "exclusive_segment_cumsum"]


class RadianceField(Protocol):
    """What the renderer needs of a field (`DynamicNeRFField`): world points (N, 3) and times (N,) in, per point
    density and colour out."""

    def __call__(self, x: Tensor, t: Tensor) -> FieldOutputs: ...

    def density(self, x: Tensor, t: Tensor) -> Tensor: ...


def step_size_for(num_samples_per_ray: int, bbox_radius: float = 1.0) -> float:
    """Marching step: the box diagonal over the sample count (threestudio: 1.732·2·R / num_samples_per_ray)."""
    return math.sqrt(3.0) * 2.0 * bbox_radius / num_samples_per_ray


@dataclass
class RaySamples:
    """Packed samples of `num_rays` rays, sorted by ray then distance.

    Attributes:
        ray_ids: (M,) int64 ray of each sample.
        t_starts: (M,) distance of each sample's interval start along its ray (the sample sits at + step/2).
        num_rays: rays rendered (some may hold no sample).
        density: (M,) no-grad density at the samples when the pruning pass evaluated it (else None).
        rgb: (M, 3) no-grad colour at the samples when asked for (else None).
        num_candidates: candidate samples in occupied cells before pruning.
        num_evaluated: candidates whose density the pruning pass evaluated.
    """

    ray_ids: Tensor
    t_starts: Tensor
    num_rays: int
    density: Tensor | None = None
    rgb: Tensor | None = None
    num_candidates: int = 0
    num_evaluated: int = 0


def _ray_box(rays: Rays, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (N,) of each ray in the box [-radius, radius]^3 (entry ≥ 0; exit < entry: miss)."""
    inv = 1.0 / torch.where(rays.directions.abs() < 1e-12, torch.full_like(rays.directions, 1e-12), rays.directions)
    t0 = (-radius - rays.origins) * inv
    t1 = (radius - rays.origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def exclusive_segment_cumsum(values: Tensor, ray_ids: Tensor, num_rays: int) -> Tensor:
    """Σ_{j<i, same ray} values_j for samples sorted by ray (float64 so long packed lists stay exact)."""
    v = values.double()
    inclusive = torch.cumsum(v, 0)
    exclusive = inclusive - v
    counts = torch.bincount(ray_ids, minlength=num_rays)
    starts = torch.cumsum(counts, 0) - counts  # (num_rays,) index of each ray's first sample
    return (exclusive - exclusive[starts[ray_ids]]).to(values.dtype)


@torch.no_grad()
def _march(
    rays: Rays,
    occupancy: OccupancyGrid,
    step_size: float,
    generator: torch.Generator | None,
    chunk: int,
) -> tuple[Tensor, Tensor]:
    """Candidate samples in occupied cells: (ray index (M,), interval start distance (M,)), sorted by ray then t.

    Every ray steps from its box entry `near` (plus the stratified offset) at `near + k·step`. Only the steps whose
    midpoints can fall in the bounding box of the occupied cells are generated (one step of margin each side), so a
    small object costs a fraction of the box diagonal; the kept samples, their order and their distances are exactly
    those of marching the whole box (the skipped steps lie in empty cells).
    """
    near, far = _ray_box(rays, occupancy.bbox_radius)
    if generator is not None:  # stratified: one random offset per ray
        near = near + to_device(torch.rand(near.shape, generator=generator), near.device) * step_size
    max_steps = int(math.ceil(2.0 * math.sqrt(3.0) * occupancy.bbox_radius / step_size)) + 1
    empty = near.new_zeros(0, dtype=torch.int64), near.new_zeros(0)
    bounds = occupancy.occupied_bounds()
    if bounds is None:
        return empty
    enter, leave = _ray_aabb(rays, *bounds)
    k_first = (torch.floor((enter - near) / step_size) - 1).clamp(min=0)
    k_last = (torch.ceil((leave - near) / step_size) + 1).clamp(max=max_steps - 1)
    hit = (leave >= enter) & (k_last >= k_first) & (far > near)
    ray_ids = torch.nonzero(hit)[:, 0]
    if ray_ids.numel() == 0:
        return empty
    k_first, counts = k_first[ray_ids], (k_last - k_first)[ray_ids] + 1
    steps_needed = int(counts.max())
    steps = torch.arange(steps_needed, device=near.device, dtype=near.dtype)
    ray_parts, t_parts = [], []
    rays_per_chunk = max(1, chunk // steps_needed)
    for start in range(0, ray_ids.shape[0], rays_per_chunk):
        ids = ray_ids[start : start + rays_per_chunk]
        k = k_first[start : start + rays_per_chunk, None] + steps[None]  # (n, S) step index along each ray
        t_start = near[ids, None] + k * step_size  # the whole-box march's distances, bit for bit
        mid = t_start + 0.5 * step_size
        points = rays.origins[ids, None, :] + rays.directions[ids, None, :] * mid[..., None]  # (n, S, 3)
        # One selection per chunk: a real step of the ray, inside the box and in an occupied cell (out-of-box points
        # clamp to a border cell and are masked by the box test).
        keep = (steps[None] < counts[start : start + rays_per_chunk, None]) & (mid < far[ids, None])
        keep &= occupancy.occupied(points.reshape(-1, 3)).reshape(mid.shape)
        ray_idx, step_idx = torch.nonzero(keep, as_tuple=True)
        ray_parts.append(ids[ray_idx])
        t_parts.append(t_start[ray_idx, step_idx])
    return torch.cat(ray_parts), torch.cat(t_parts)


def _ray_aabb(rays: Rays, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (N,) of each ray in the box [lo, hi] (3,) (exit < entry: miss)."""
    inv = 1.0 / torch.where(rays.directions.abs() < 1e-12, torch.full_like(rays.directions, 1e-12), rays.directions)
    t0 = (lo - rays.origins) * inv
    t1 = (hi - rays.origins) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def midpoints(rays: Rays, ray_ids: Tensor, t_starts: Tensor, step_size: float) -> Tensor:
    return rays.origins[ray_ids] + rays.directions[ray_ids] * (t_starts + 0.5 * step_size)[:, None]


@torch.no_grad()
def _evaluate(field: RadianceField, x: Tensor, t: Tensor, chunk: int, with_rgb: bool) -> tuple[Tensor, Tensor | None]:
    """No-grad density (and colour) of points x (N, 3) at times t (N,), `chunk` points at a time (memory bound)."""
    densities, colours = [], []
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        if with_rgb:
            out = field(x[sl], t[sl])
            densities.append(out.density)
            colours.append(out.rgb)
        else:
            densities.append(field.density(x[sl], t[sl]))
    if not densities:
        return x.new_zeros(0), (x.new_zeros(0, 3) if with_rgb else None)
    return torch.cat(densities), (torch.cat(colours) if with_rgb else None)


def _ragged_arange(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Indices `starts[k] + j` for j < counts[k], concatenated over k, and the k of each (both (Σ counts,))."""
    total = int(counts.sum())
    segment = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    return starts[segment] + torch.arange(total, device=counts.device) - first[segment], segment


@torch.no_grad()
def _prune(
    field: RadianceField,
    rays: Rays,
    times: Tensor,
    ray_ids: Tensor,
    t_starts: Tensor,
    *,
    step_size: float,
    alpha_threshold: float,
    early_stop_eps: float,
    block: int,
    chunk: int,
    with_rgb: bool,
) -> tuple[Tensor, Tensor, Tensor | None, int]:
    """Keep samples with alpha ≥ alpha_threshold and transmittance ≥ early_stop_eps (module docstring, step 3).

    Returns:
        Sorted indices of the kept candidates, their density, their colour (with_rgb), candidates evaluated.
    """
    num_rays = times.shape[0]
    if block <= 0 or early_stop_eps <= 0:  # reference: every candidate at once
        density, rgb = _evaluate(field, midpoints(rays, ray_ids, t_starts, step_size), times[ray_ids], chunk, with_rgb)
        sigma_delta = density * step_size
        alpha = 1.0 - torch.exp(-sigma_delta)
        transmittance = torch.exp(-exclusive_segment_cumsum(sigma_delta, ray_ids, num_rays))
        kept = torch.nonzero((transmittance >= early_stop_eps) & (alpha >= alpha_threshold))[:, 0]
        return kept, density[kept], (rgb[kept] if rgb is not None else None), int(ray_ids.numel())
    counts = torch.bincount(ray_ids, minlength=num_rays)
    starts = torch.cumsum(counts, 0) - counts
    before = torch.zeros(num_rays, dtype=torch.float64, device=ray_ids.device)  # Σ σδ of the evaluated samples
    active = torch.nonzero(counts > 0)[:, 0]
    kept_parts, density_parts, rgb_parts = [], [], []
    evaluated, offset = 0, 0
    while active.numel() > 0:
        # The next `block` candidates of every active ray, sorted by ray then distance.
        n = (counts[active] - offset).clamp(max=block)
        index, segment = _ragged_arange(starts[active] + offset, n)
        evaluated += index.numel()
        density, rgb = _evaluate(
            field, midpoints(rays, ray_ids[index], t_starts[index], step_size), times[ray_ids[index]], chunk, with_rgb
        )
        sigma_delta = density * step_size
        # Exclusive cumulative σδ along each ray: within this block, plus what the earlier blocks accumulated.
        within = torch.cumsum(sigma_delta.double(), 0) - sigma_delta.double()
        exclusive = within - within[(torch.cumsum(n, 0) - n)[segment]] + before[active][segment]
        transmittance = torch.exp(-exclusive.to(sigma_delta.dtype))
        alpha = 1.0 - torch.exp(-sigma_delta)
        keep = torch.nonzero((transmittance >= early_stop_eps) & (alpha >= alpha_threshold))[:, 0]
        kept_parts.append(index[keep])
        density_parts.append(density[keep])
        if rgb is not None:
            rgb_parts.append(rgb[keep])
        before.index_add_(0, active[segment], sigma_delta.double())
        offset += block
        # A ray whose transmittance already fell below the threshold keeps none of its later samples.
        alive = (counts[active] > offset) & (torch.exp(-before[active].to(sigma_delta.dtype)) >= early_stop_eps)
        active = active[alive]
    kept = torch.cat(kept_parts)
    kept, order = torch.sort(kept)
    rgb = torch.cat(rgb_parts)[order] if with_rgb else None
    return kept, torch.cat(density_parts)[order], rgb, evaluated


def sample_rays(
    field: RadianceField,
    rays: Rays,
    times: Tensor,
    occupancy: OccupancyGrid,
    *,
    step_size: float,
    alpha_threshold: float,
    early_stop_eps: float,
    generator: torch.Generator | None = None,
    chunk: int = 1 << 22,
    eval_chunk: int | None = None,
    early_stop_block: int = 0,
    with_values: bool = False,
    with_rgb: bool = False,
) -> RaySamples:
    """Steps 1–3 of the module docstring, without autograd: the samples `composite` evaluates.

    Args:
        field, rays, times, occupancy, step_size, alpha_threshold, early_stop_eps, generator, chunk, eval_chunk:
            as in `render_rays`.
        early_stop_block: evaluate each ray's candidates this many at a time and stop at transmittance <
            early_stop_eps (0: all at once). The kept samples are the same.
        with_values: always run the density pass and return the kept samples' density (even without pruning).
        with_rgb: also return their colour (implies with_values).
    """
    with_values = with_values or with_rgb
    ray_ids, t_starts = _march(rays, occupancy, step_size, generator, chunk)
    candidates = int(ray_ids.numel())
    samples = RaySamples(ray_ids, t_starts, times.shape[0], num_candidates=candidates)
    if candidates > 0 and (with_values or alpha_threshold > 0 or early_stop_eps > 0):
        kept, density, rgb, evaluated = _prune(
            field,
            rays,
            times,
            ray_ids,
            t_starts,
            step_size=step_size,
            alpha_threshold=alpha_threshold,
            early_stop_eps=early_stop_eps,
            block=early_stop_block,
            chunk=eval_chunk or chunk,
            with_rgb=with_rgb,
        )
        samples = RaySamples(
            ray_ids[kept],
            t_starts[kept],
            times.shape[0],
            density=density if with_values else None,
            rgb=rgb,
            num_candidates=candidates,
            num_evaluated=evaluated,
        )
    elif with_values:  # no candidates at all
        samples.density = t_starts.new_zeros(0)
        samples.rgb = t_starts.new_zeros(0, 3) if with_rgb else None
    return samples
