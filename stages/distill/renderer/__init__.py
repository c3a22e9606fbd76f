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

One module per concern: `occupancy` (the grid), `marching` (steps 1–3: `sample_rays`), `compositing` (step 4:
`composite`, and `render_rays` = both), `deferred` (`render_rays_deferred`: the same render without autograd,
back-propagated later chunk by chunk so the field's autograd memory is bounded by the chunk).
"""

from stages.distill.renderer.compositing import RenderOutput, composite, render_rays
from stages.distill.renderer.deferred import DeferredRender, deferred_from_samples, render_rays_deferred
from stages.distill.renderer.marching import RadianceField, RaySamples, sample_rays, step_size_for
from stages.distill.renderer.occupancy import OccupancyGrid

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
