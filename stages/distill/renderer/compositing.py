"""Compositing: the kept samples evaluated with autograd and blended on the background (step 4 of
`stages.distill.renderer`): w_i = T_i·α_i, α_i = 1 − exp(−σ_i δ_i), rgb = Σ w_i c_i + (1 − Σ w_i)·background
(paper eq. 8).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from stages.distill.cameras import Rays
from stages.distill.renderer.marching import (
    RadianceField,
    RaySamples,
    exclusive_segment_cumsum,
    midpoints,
    sample_rays,
)
from stages.distill.renderer.occupancy import OccupancyGrid

__all__ = ["RenderOutput", "composite", "render_rays", "accumulate"]


@dataclass
class RenderOutput:
    """Per ray: rgb (N, 3) in [0, 1] over the background (None from a render without colour), opacity (N,) in
    [0, 1]; orient (N,) when asked for (Σ_i w_i.detach()·relu(n_i·d)², threestudio's orientation term), num_samples =
    samples composited."""

    rgb: Tensor | None
    opacity: Tensor
    orient: Tensor | None
    num_samples: int


def accumulate(
    density: Tensor, rgb: Tensor | None, ray_ids: Tensor, num_rays: int, step_size: float, background: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Compositing (paper eq. 8): per-sample weights (M,), per-ray opacity (N,) and rgb over the background."""
    sigma_delta = density * step_size
    alpha = 1.0 - torch.exp(-sigma_delta)
    weights = torch.exp(-exclusive_segment_cumsum(sigma_delta, ray_ids, num_rays)) * alpha  # (M,)
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
    """Evaluate `samples` with autograd and composite them.

    Args:
        field, rays, times: as in `render_rays` (the rays the samples index).
        samples: from `sample_rays` (its no-grad values are not used).
        step_size, background, with_orient: as in `render_rays`.
        with_rgb: False evaluates the density only (`field.density`: no colour network) and returns rgb None. The
            orientation pass uses it: its term depends on the normals alone (the weights enter detached), so the
            colour would be computed for nothing; the term and its gradients are the same either way.
    """
    ray_ids, num_rays = samples.ray_ids, samples.num_rays
    x = midpoints(rays, ray_ids, samples.t_starts, step_size)
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
    weights, opacity, rgb = accumulate(density, colour, ray_ids, num_rays, step_size, background)
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
    """Render rays (N) at per-ray times (N,) in [0, 1]: `sample_rays` then `composite` (`stages.distill.renderer`
    steps 1–4), with autograd through the kept samples.

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
