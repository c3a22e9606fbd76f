"""Deferred back-propagation: render without autograd, back-propagate the pixels' gradients later, chunk by chunk.

Steps 1–3 and the compositing run without autograd; the caller turns its loss into gradients w.r.t. the rendered
pixels, then `DeferredRender.backward` re-evaluates the kept samples in chunks of whole rays with autograd and
back-propagates chunk by chunk, so the field's autograd memory is bounded by the chunk instead of growing with the
image size. Parameter gradients equal those of one `render_rays` + backward within float tolerance (same samples;
sums in another order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from stages.distill.cameras import Rays
from stages.distill.renderer.compositing import RenderOutput, accumulate, composite
from stages.distill.renderer.marching import RadianceField, RaySamples, sample_rays
from stages.distill.renderer.occupancy import OccupancyGrid

__all__ = ["ChunkLoss", "DeferredRender", "render_rays_deferred", "deferred_from_samples"]


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
        _, opacity, rgb = accumulate(
            samples.density, samples.rgb, samples.ray_ids, samples.num_rays, step_size, background
        )
    return DeferredRender(rgb, opacity, samples, field, rays, times, step_size, background)
