"""Volume renderer: ray marching through an occupancy grid shared over time, then NeRF compositing on white.

Spec §4.2 (threestudio `NeRFVolumeRenderer` on nerfacc 0.5.2 `OccGridEstimator`), in pure torch:
1. each ray is clipped to the scene box and marched with a fixed step `2·√3·R / num_samples_per_ray` from a
   random per-ray offset (stratified) or from the box entry (deterministic renders);
2. samples whose midpoint falls in an empty occupancy cell are skipped; the grid is shared by all timestamps:
   a cell's value is the max over the timestamps of density × step (paper A.1);
3. a no-grad density pass drops samples with alpha < `alpha_threshold` or transmittance < `early_stop_eps`
   (nerfacc's `render_visibility_from_density`, i.e. early ray termination);
4. the survivors are evaluated with gradients and composited: w_i = T_i·α_i, α_i = 1 − exp(−σ_i δ_i),
   rgb = Σ w_i c_i + (1 − Σ w_i)·background (paper eq. 8).
Samples are "packed" (one flat list sorted by ray), so memory follows the number of useful samples.

Two exact speed/memory options (same kept samples, same values within float tolerance):
- `early_stop_block` > 0: step 3 evaluates each ray's candidates that many at a time, in order, and stops
  evaluating a ray once its transmittance is below `early_stop_eps` (every later sample of it would be dropped).
  0 evaluates every candidate at once (the reference).
- deferred back-propagation (`render_rays_deferred`): steps 1–3 and the compositing run without autograd; the
  caller turns its loss into gradients w.r.t. the rendered pixels, then `DeferredRender.backward` re-evaluates the
  kept samples in chunks of whole rays with autograd and back-propagates chunk by chunk, so the field's autograd
  memory is bounded by the chunk instead of growing with the image size. Parameter gradients equal those of one
  `render_rays` + backward within float tolerance (same samples; sums in another order).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from stages.distill.cameras import Rays
from stages.distill.fields import FieldOutputs
from stages.distill.host import to_device

__all__ = [
    "OccupancyGrid",
    "RadianceField",
    "RenderOutput",
    "RaySamples",
    "DeferredRender",
    "render_rays",
    "render_rays_deferred",
    "deferred_from_samples",
    "sample_rays",
    "composite",
    "step_size_for",
]

DensityFn = Callable[[Tensor], Tensor]


class RadianceField(Protocol):
    """What the renderer needs of a field (`DynamicNeRFField`): world points (N, 3) and times (N,) in, per point
    density and colour out."""

    def __call__(self, x: Tensor, t: Tensor) -> FieldOutputs: ...

    def density(self, x: Tensor, t: Tensor) -> Tensor: ...


def step_size_for(num_samples_per_ray: int, bbox_radius: float = 1.0) -> float:
    """Marching step: the box diagonal over the sample count (threestudio: 1.732·2·R / num_samples_per_ray)."""
    return math.sqrt(3.0) * 2.0 * bbox_radius / num_samples_per_ray


class OccupancyGrid(nn.Module):
    """A binary R³ occupancy grid over the box, with nerfacc's EMA update rule (`OccGridEstimator._update`).

    Args:
        resolution: cells per side (32).
        bbox_radius: half side of the box.
        ema_decay: per-update decay of a cell's stored occupancy (0.95).
        threshold: a cell is occupied when its value exceeds min(threshold, mean value) (0.01).
        warmup_steps: before this step every cell is evaluated, afterwards a quarter at random plus occupied ones.
    """

    def __init__(
        self, resolution: int, bbox_radius: float, ema_decay: float, threshold: float, warmup_steps: int
    ) -> None:
        super().__init__()
        self.resolution, self.bbox_radius = resolution, bbox_radius
        self.ema_decay, self.threshold, self.warmup_steps = ema_decay, threshold, warmup_steps
        self.register_buffer("occupancy", torch.zeros(resolution**3))
        self.register_buffer("binary", torch.zeros(resolution**3, dtype=torch.bool))

    @torch.no_grad()
    def update(self, step: int, density_fn: DensityFn, step_size: float, generator: torch.Generator) -> None:
        """Re-evaluate cells at a random point each with `density_fn(x) · step_size` and refresh the binary grid.

        Args:
            step: the training step (selects the warm-up rule).
            density_fn: world points (N, 3) → (N,) density; for the shared grid, the max over the timestamps.
            step_size: marching step, turns density into the occupancy value nerfacc thresholds.
            generator: CPU generator for the cell choice and the jitter.
        """
        cells = self.resolution**3
        if step < self.warmup_steps:
            indices = torch.arange(cells)
        else:
            uniform = torch.randint(cells, (cells // 4,), generator=generator)
            # The draw below depends on the number of occupied cells: one host copy every update (not every step).
            occupied = torch.nonzero(self.binary.cpu())[:, 0]
            if cells // 4 < len(occupied):
                occupied = occupied[torch.randint(len(occupied), (cells // 4,), generator=generator)]
            indices = torch.cat([uniform, occupied])
        r = self.resolution
        coords = torch.stack([indices // (r * r), (indices // r) % r, indices % r], dim=-1).float()  # (N, 3) ijk
        unit = (coords + torch.rand(coords.shape, generator=generator)) / r  # (N, 3) in [0, 1]
        x = (unit * 2.0 - 1.0) * self.bbox_radius
        device = self.occupancy.device
        occ = density_fn(to_device(x, device)) * step_size
        indices = to_device(indices, device)
        self.occupancy[indices] = torch.maximum(self.occupancy[indices] * self.ema_decay, occ)
        threshold = self.occupancy.clamp(min=0).mean().clamp(max=self.threshold)
        self.binary.copy_(self.occupancy > threshold)

    def occupied_bounds(self) -> tuple[Tensor, Tensor] | None:
        """World-space bounding box (lo (3,), hi (3,)) of the occupied cells, None when no cell is (one host sync)."""
        r = self.resolution
        cells = self.binary.view(r, r, r)
        per_axis = [cells.any(dim=(1, 2)), cells.any(dim=(0, 2)), cells.any(dim=(0, 1))]  # x, y, z
        if not bool(per_axis[0].any()):
            return None
        index = torch.arange(r, device=cells.device)
        first = torch.stack([torch.where(a, index, r).min() for a in per_axis])
        last = torch.stack([torch.where(a, index, -1).max() for a in per_axis])
        cell = 2.0 * self.bbox_radius / r
        return first.float() * cell - self.bbox_radius, (last + 1).float() * cell - self.bbox_radius

    def occupied(self, x: Tensor) -> Tensor:
        """(N,) bool: is the cell holding world point x (N, 3) occupied."""
        r = self.resolution
        ijk = ((x / self.bbox_radius + 1.0) * 0.5 * r).long().clamp(0, r - 1)  # (N, 3)
        return self.binary[(ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]]


@dataclass
class RenderOutput:
    """Per ray: rgb (N, 3) in [0, 1] over the background (None from a render without colour), opacity (N,) in
    [0, 1]; orient (N,) when asked for (Σ_i w_i.detach()·relu(n_i·d)², threestudio's orientation term), num_samples =
    samples composited."""

    rgb: Tensor | None
    opacity: Tensor
    orient: Tensor | None
    num_samples: int


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


def _exclusive_segment_cumsum(values: Tensor, ray_ids: Tensor, num_rays: int) -> Tensor:
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


def _midpoints(rays: Rays, ray_ids: Tensor, t_starts: Tensor, step_size: float) -> Tensor:
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
        density, rgb = _evaluate(
            field, _midpoints(rays, ray_ids, t_starts, step_size), times[ray_ids], chunk, with_rgb
        )
        sigma_delta = density * step_size
        alpha = 1.0 - torch.exp(-sigma_delta)
        transmittance = torch.exp(-_exclusive_segment_cumsum(sigma_delta, ray_ids, num_rays))
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
            field, _midpoints(rays, ray_ids[index], t_starts[index], step_size), times[ray_ids[index]], chunk, with_rgb
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


def _accumulate(
    density: Tensor, rgb: Tensor | None, ray_ids: Tensor, num_rays: int, step_size: float, background: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Compositing (paper eq. 8): per-sample weights (M,), per-ray opacity (N,) and rgb over the background."""
    sigma_delta = density * step_size
    alpha = 1.0 - torch.exp(-sigma_delta)
    weights = torch.exp(-_exclusive_segment_cumsum(sigma_delta, ray_ids, num_rays)) * alpha  # (M,)
    opacity = torch.zeros(num_rays, device=density.device, dtype=weights.dtype).index_add(0, ray_ids, weights)
    if rgb is None:
        return weights, opacity, None
    colour = torch.zeros(num_rays, 3, device=density.device, dtype=weights.dtype)
    colour = colour.index_add(0, ray_ids, weights[:, None] * rgb)
    return weights, opacity, colour + (1.0 - opacity[:, None]) * background


def composite(
    field: RadianceField,
    rays: Rays,
    times: Tensor,
    samples: RaySamples,
    *,
    step_size: float,
    background: float = 1.0,
    with_orient: bool = False,
    with_rgb: bool = True,
) -> RenderOutput:
    """Step 4 of the module docstring: evaluate `samples` with autograd and composite them.

    Args:
        field, rays, times: as in `render_rays` (the rays the samples index).
        samples: from `sample_rays` (its no-grad values are not used).
        step_size, background, with_orient: as in `render_rays`.
        with_rgb: False evaluates the density only (`field.density`: no colour network) and returns rgb None. The
            orientation pass uses it: its term depends on the normals alone (the weights enter detached), so the
            colour would be computed for nothing; the term and its gradients are the same either way.
    """
    ray_ids, num_rays = samples.ray_ids, samples.num_rays
    x = _midpoints(rays, ray_ids, samples.t_starts, step_size)
    if with_orient:
        x = x.detach().requires_grad_(True)
    with torch.enable_grad() if with_orient else contextlib.nullcontext():
        if with_rgb:
            out = field(x, times[ray_ids])
            density, colour = out.density, out.rgb
        else:
            density, colour = field.density(x, times[ray_ids]), None
        if with_orient:
            (grad,) = torch.autograd.grad(density.sum(), x, create_graph=True)
            normals = -grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    weights, opacity, rgb = _accumulate(density, colour, ray_ids, num_rays, step_size, background)
    orient = None
    if with_orient:
        facing = (normals * rays.directions[ray_ids]).sum(-1).clamp(min=0.0) ** 2
        orient = torch.zeros(num_rays, device=x.device).index_add(0, ray_ids, weights.detach() * facing)
    return RenderOutput(rgb=rgb, opacity=opacity, orient=orient, num_samples=int(ray_ids.numel()))


def render_rays(
    field: RadianceField,
    rays: Rays,
    times: Tensor,
    occupancy: OccupancyGrid,
    *,
    step_size: float,
    alpha_threshold: float,
    early_stop_eps: float,
    background: float = 1.0,
    generator: torch.Generator | None = None,
    chunk: int = 1 << 22,
    with_orient: bool = False,
    eval_chunk: int | None = None,
    early_stop_block: int = 0,
) -> RenderOutput:
    """Render rays (N) at per-ray times (N,) in [0, 1] (module docstring), with autograd through the kept samples.

    Args:
        field: the dynamic NeRF.
        rays: N rays, unit directions.
        times: (N,) normalised time of each ray.
        occupancy: the shared occupancy grid.
        step_size: marching step, world units.
        alpha_threshold: drop samples with a smaller alpha (0 keeps all).
        early_stop_eps: stop a ray once its transmittance falls below this.
        background: grey level of the solid background (1 = white).
        generator: CPU generator for stratified offsets; None marches from the box entry (deterministic).
        chunk: candidate samples generated at a time by the no-grad march (memory bound).
        with_orient: also compute the orientation term from analytic normals −∇σ/‖∇σ‖.
        eval_chunk: points per no-grad field evaluation of the pruning pass (memory bound; None: `chunk`).
        early_stop_block: see `sample_rays` (0: the reference pruning pass; same samples either way).
    """
    samples = sample_rays(
        field,
        rays,
        times,
        occupancy,
        step_size=step_size,
        alpha_threshold=alpha_threshold,
        early_stop_eps=early_stop_eps,
        generator=generator,
        chunk=chunk,
        eval_chunk=eval_chunk,
        early_stop_block=early_stop_block,
    )
    return composite(field, rays, times, samples, step_size=step_size, background=background, with_orient=with_orient)


ChunkLoss = Callable[[RenderOutput, slice], Tensor]
"""A chunk's loss for `DeferredRender.backward`: (the chunk's render, the slice of rays it covers) → scalar."""


@dataclass
class DeferredRender:
    """A render without autograd whose gradients are back-propagated later, chunk by chunk (module docstring).

    Attributes:
        rgb: (N, 3) no-grad colour over the background (None when rendered without colour).
        opacity: (N,) no-grad opacity.
        samples: the kept samples (re-evaluated by `backward`).
    """

    rgb: Tensor | None
    opacity: Tensor
    samples: RaySamples
    field: RadianceField
    rays: Rays
    times: Tensor
    step_size: float
    background: float

    @property
    def num_samples(self) -> int:
        return int(self.samples.ray_ids.numel())

    def chunks(self, max_samples: int) -> list[tuple[int, int, int, int]]:
        """(first sample, end sample, first ray, end ray) of consecutive chunks of whole rays: the packed list is cut
        every `max_samples` samples and each cut moved back to the start of its ray, so a chunk holds fewer than
        max_samples plus one ray's samples. One host sync."""
        ray_ids = self.samples.ray_ids
        m = ray_ids.numel()
        if m == 0:
            return []
        cuts = torch.arange(max_samples, max(m, max_samples), max_samples, device=ray_ids.device)
        # Move every cut back to the first sample of the ray it falls in: rays are never split.
        cuts = torch.searchsorted(ray_ids, ray_ids[cuts])
        bounds = torch.unique(torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), m)]))
        first_ray, last_ray = ray_ids[bounds[:-1]], ray_ids[bounds[1:] - 1]
        rows = torch.stack([bounds[:-1], bounds[1:], first_ray, last_ray + 1], dim=1).tolist()
        return [tuple(row) for row in rows]

    def backward(self, loss_fn: ChunkLoss, *, chunk_samples: int, with_orient: bool = False) -> None:
        """Back-propagate `Σ_chunks loss_fn(chunk render, ray slice)` into the field's parameters.

        With `loss_fn = lambda out, sl: (out.rgb * g_rgb[sl]).sum() + (out.opacity * g_opacity[sl]).sum()` the
        parameters receive `J^T g`, i.e. the gradient of any loss whose pixel gradients are g.

        Args:
            loss_fn: the chunk's scalar loss; rays without samples are not in any chunk (they hold no gradient).
            chunk_samples: samples per autograd chunk (memory bound; whole rays).
            with_orient: the chunk renders carry the orientation term (double backward through the field).

        A render made without colour (`with_rgb=False`) is re-evaluated without colour too (`composite`'s with_rgb).
        Only the field's parameters receive gradients (`backward(inputs=...)`): with normals the sample positions
        require grad too, and their gradient, which nothing reads, is not computed.
        """
        params = [p for p in self.field.parameters() if p.requires_grad]
        for s0, s1, r0, r1 in self.chunks(chunk_samples):
            part = RaySamples(self.samples.ray_ids[s0:s1] - r0, self.samples.t_starts[s0:s1], r1 - r0)
            rays = Rays(self.rays.origins[r0:r1], self.rays.directions[r0:r1])
            out = composite(
                self.field,
                rays,
                self.times[r0:r1],
                part,
                step_size=self.step_size,
                background=self.background,
                with_orient=with_orient,
                with_rgb=self.rgb is not None,
            )
            loss = loss_fn(out, slice(r0, r1))
            if loss.requires_grad:
                loss.backward(inputs=params or None)


def render_rays_deferred(
    field: RadianceField,
    rays: Rays,
    times: Tensor,
    occupancy: OccupancyGrid,
    *,
    step_size: float,
    alpha_threshold: float,
    early_stop_eps: float,
    background: float = 1.0,
    generator: torch.Generator | None = None,
    chunk: int = 1 << 22,
    eval_chunk: int | None = None,
    early_stop_block: int = 0,
    with_rgb: bool = True,
) -> DeferredRender:
    """`render_rays` without autograd, keeping its samples for `DeferredRender.backward` (module docstring).

    The same random draws as `render_rays` (one stratified offset per ray), the same samples, and the no-grad
    values of the pruning pass, composited. Arguments as in `render_rays`; with_rgb False skips the colour (an
    orientation pass needs only the opacity).
    """
    samples = sample_rays(
        field,
        rays,
        times,
        occupancy,
        step_size=step_size,
        alpha_threshold=alpha_threshold,
        early_stop_eps=early_stop_eps,
        generator=generator,
        chunk=chunk,
        eval_chunk=eval_chunk,
        early_stop_block=early_stop_block,
        with_values=True,
        with_rgb=with_rgb,
    )
    return deferred_from_samples(field, rays, times, samples, step_size=step_size, background=background)


def deferred_from_samples(
    field: RadianceField,
    rays: Rays,
    times: Tensor,
    samples: RaySamples,
    *,
    step_size: float,
    background: float = 1.0,
) -> DeferredRender:
    """Composite the no-grad values of `samples` (from `sample_rays(..., with_values=True)`) into a
    `DeferredRender` (colour only when the samples carry it)."""
    if samples.density is None:
        raise ValueError("deferred_from_samples needs samples with values (sample_rays(..., with_values=True))")
    with torch.no_grad():
        _, opacity, rgb = _accumulate(
            samples.density, samples.rgb, samples.ray_ids, samples.num_rays, step_size, background
        )
    return DeferredRender(rgb, opacity, samples, field, rays, times, step_size, background)
