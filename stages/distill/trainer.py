"""The optimisation loop of the 4D stage: plain torch, one function per iteration, atomic resumable checkpoints.

Spec §5 (paper eq. 12): L = L_sds + L_anchor + λ3 L_orient + λ4 L_opacity + λ5 L_sparse, AdamW (§5.4). Every
random draw (cameras, stratified offsets, timesteps, noise, posterior samples, anchor frame, occupancy jitter) comes
from one CPU generator whose state is checkpointed with the field, the optimiser state, the occupancy grid and the
step, so a run resumed from a checkpoint continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from stages.common.cameras import OrbitCamera
from stages.common.lpips import LPIPSVGG
from stages.distill.anchor import AnchorTarget
from stages.distill.backprop import build_backprop
from stages.distill.builders import build_field, build_occupancy, build_optimizer, field_kwargs, set_learning_rates
from stages.distill.cameras import Rays, SDSViews, camera_rays, draw_sds_views
from stages.distill.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from stages.distill.config import DistillConfig
from stages.distill.fields import DynamicNeRFField
from stages.distill.fit_loop import fit
from stages.distill.guidance import FourDMGuidance, GuidanceConditioning
from stages.distill.host import to_device
from stages.distill.losses import anchor_loss_terms, opaque_loss, sparsity_loss
from stages.distill.metrics import metrics_to_floats
from stages.distill.reconstruction import build_reconstruction, reconstruction_loss
from stages.distill.renderer import (
    DeferredRender,
    RaySamples,
    RenderOutput,
    composite,
    deferred_from_samples,
    sample_rays,
    step_size_for,
)

__all__ = [
    "Trainer",
    "AnchorTarget",
    "build_field",
    "field_kwargs",
    "build_optimizer",
    "build_occupancy",
    "metrics_to_floats",
    "CHECKPOINT_FILE",
]

log = logging.getLogger(__name__)


class Trainer:
    """Owns the field, optimiser, occupancy grid, generator and step; `train_step` runs one iteration.

    Args:
        config: the stage config.
        field: the dynamic NeRF, on `device`.
        anchor: the anchor video and its camera.
        guidance, conditioning: 4DM SDS; may be None only when `loss_weights.sds` is 0.
        lpips: LPIPS-VGG for the anchor loss; may be None only when `loss_weights.anchor_lpips` is 0.
        device: where the field lives.
    """

    def __init__(
        self,
        config: DistillConfig,
        field: DynamicNeRFField,
        anchor: AnchorTarget,
        *,
        guidance: FourDMGuidance | None,
        conditioning: GuidanceConditioning | None,
        lpips: LPIPSVGG | None,
        device: torch.device,
    ) -> None:
        if config.loss_weights.sds > 0 and (guidance is None or conditioning is None):
            raise ValueError("loss_weights.sds > 0 needs the 4DM guidance and its conditioning")
        if config.loss_weights.anchor_lpips > 0 and lpips is None:
            raise ValueError("loss_weights.anchor_lpips > 0 needs the LPIPS network")
        self.config, self.field, self.anchor, self.device = config, field, anchor, device
        self.guidance, self.conditioning, self.lpips = guidance, conditioning, lpips
        self.num_frames = anchor.frames.shape[0]
        self.times = torch.linspace(0.0, 1.0, self.num_frames)
        self.step_size = step_size_for(config.renderer.num_samples_per_ray, config.field.bbox_radius)
        self.occupancy = build_occupancy(config).to(device)
        self.optimizer = build_optimizer(field, config.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.timings: dict[str, float] | None = None
        """Set to a dict to accumulate seconds per part of the iteration (profiling: synchronises the device)."""
        self.render_stats: dict[str, dict[str, int]] = {}
        """Per render kind ("sds", "orient", "anchor", "render"): rays, kept samples, candidates in occupied cells
        and candidates the pruning pass evaluated, of the last such render."""
        self.backprop = build_backprop(config.runtime, self, self._phase)
        """Direct or deferred back-propagation, chosen once (`stages.distill.backprop`)."""
        if guidance is not None and config.runtime.offload_encoders:
            guidance.offload_encoders()
        self.reconstruction = build_reconstruction(config, anchor, self.times, device)
        """Every anchor video's rays and targets, when the reconstruction term is on (ours)."""

    # -- rendering ------------------------------------------------------------------------------------------

    def _rays(self, cameras: list[OrbitCamera], times: list[float], size: int) -> tuple[Rays, Tensor]:
        """Rays of every (time, camera) pair ordered (time, camera, row, column), and each ray's time."""
        per_camera = [camera_rays(c, size, self.device) for c in cameras]
        origins = torch.cat([p.origins for p in per_camera]).repeat(len(times), 1)
        directions = torch.cat([p.directions for p in per_camera]).repeat(len(times), 1)
        ray_times = to_device(torch.tensor(times), self.device).repeat_interleave(len(cameras) * size * size)
        return Rays(origins, directions), ray_times

    def _sample(
        self, rays: Rays, ray_times: Tensor, *, stratified: bool, with_values: bool, with_rgb: bool, kind: str
    ) -> RaySamples:
        r = self.config.renderer
        samples = sample_rays(
            self.field,
            rays,
            ray_times,
            self.occupancy,
            step_size=self.step_size,
            alpha_threshold=r.alpha_threshold,
            early_stop_eps=r.early_stop_eps,
            generator=self.generator if stratified else None,
            chunk=self.config.runtime.march_chunk,
            eval_chunk=self.config.runtime.eval_chunk,
            early_stop_block=self.config.runtime.early_stop_block,
            with_values=with_values,
            with_rgb=with_rgb,
        )
        self.render_stats[kind] = {
            "rays": samples.num_rays,
            "samples": int(samples.ray_ids.numel()),
            "candidates": samples.num_candidates,
            "evaluated": samples.num_evaluated,
        }
        return samples

    def render(
        self,
        cameras: list[OrbitCamera],
        times: list[float],
        size: int,
        *,
        stratified: bool,
        with_orient: bool = False,
        with_rgb: bool = True,
        kind: str = "render",
    ) -> RenderOutput:
        """Render every (time, camera) pair with autograd, rays ordered (time, camera, row, column); its sample
        counts go to `render_stats[kind]`. with_rgb False: density only (`composite`)."""
        rays, ray_times = self._rays(cameras, times, size)
        samples = self._sample(rays, ray_times, stratified=stratified, with_values=False, with_rgb=False, kind=kind)
        return composite(
            self.field, rays, ray_times, samples, step_size=self.step_size, with_orient=with_orient, with_rgb=with_rgb
        )

    def render_deferred(
        self,
        cameras: list[OrbitCamera],
        times: list[float],
        size: int,
        *,
        stratified: bool,
        with_rgb: bool = True,
        kind: str = "render",
    ) -> DeferredRender:
        """`render` without autograd, for deferred back-propagation (same random draws, same samples)."""
        rays, ray_times = self._rays(cameras, times, size)
        samples = self._sample(rays, ray_times, stratified=stratified, with_values=True, with_rgb=with_rgb, kind=kind)
        return deferred_from_samples(self.field, rays, ray_times, samples, step_size=self.step_size)

    def _max_density(self, x: Tensor) -> Tensor:
        """The shared occupancy grid's value: max over the timestamps (paper A.1)."""
        chunk = self.config.runtime.eval_chunk
        return torch.cat(
            [
                torch.stack([self.field.density(p, torch.full_like(p[:, 0], float(t))) for t in self.times]).amax(0)
                for p in x.split(chunk)
            ]
        )

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Time a part of the iteration into `self.timings` when it is a dict (synchronising the device: profiling
        only, it costs speed); does nothing when `self.timings` is None (the default)."""
        if self.timings is None:
            yield
            return
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with torch.profiler.record_function(f"phase:{name}"):  # groups a torch.profiler trace by phase
            yield
            sync()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # -- one iteration -------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the logged terms (reading them is one host sync)."""
        return metrics_to_floats(self.step_tensors())

    def step_tensors(self) -> dict[str, Tensor | float]:
        """One optimisation step; returns the logged terms as device tensors (no host sync for them).

        Every render goes through `self.backprop`: direct, or deferred when `runtime.grad_chunk_samples` > 0 (the
        same random draws, samples and gradients within float tolerance).
        """
        cfg, w, step = self.config, self.config.loss_weights, self.step
        metrics: dict[str, Tensor | float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        terms: list[Tensor] = []  # weighted loss terms, in the order they are added to the total
        stepped = False  # has any gradient reached the field
        # 1. Occupancy grid, shared over time.
        if step % cfg.renderer.occupancy_update_every_steps == 0:
            with self._phase("occupancy"):
                self.occupancy.update(step, self._max_density, self.step_size, self.generator)
        # 2. SDS renders: V random orthogonal views × all F timestamps.
        size = cfg.sds_resolution(step)
        views = draw_sds_views(self.generator, cfg.cameras)
        # 3-4. SDS and the opacity regularisers on its renders. SDS is off before guidance.start_step (ours: a
        # reconstruction phase first); the renders are skipped when neither SDS nor a regulariser reads them.
        sds_on = w.sds > 0 and step >= cfg.guidance.start_step
        lam_sparsity, lam_opaque = w.sparsity(step), w.opaque(step)
        num_rays = num_samples = 0
        if sds_on or lam_sparsity > 0 or lam_opaque > 0:
            sds_terms, reached = self._sds_phase(views, size, sds_on, lam_sparsity, lam_opaque, metrics)
            terms += sds_terms
            stepped |= reached
            num_rays, num_samples = self.render_stats["sds"]["rays"], self.render_stats["sds"]["samples"]
        # 5. Orientation of analytic normals: the same views at one random timestamp.
        if (lam := w.orient(step)) > 0:
            frame = int(torch.randint(self.num_frames, (1,), generator=self.generator))
            with self._phase("orient"):
                term, reached = self.backprop.orientation(views.cameras, [float(self.times[frame])], size, lam)
                stepped |= reached
                terms.append(lam * term)
                metrics["loss/orient"] = term.detach()
        # 6. Anchor loss (eq. 11, plus the optional pixel L1): the anchor view (and any extra anchor views) at one
        # random frame, at the anchor video's size.
        if w.anchor_lpips > 0 or w.anchor_dssim > 0 or w.anchor_l1 > 0:
            frame = int(torch.randint(self.num_frames, (1,), generator=self.generator))
            with self._phase("anchor"):
                target = to_device(self.anchor.frame(frame), self.device)  # (A, 3, H, W)
                num_a, size_a = target.shape[0], target.shape[-1]
                a_view = self.backprop.render(self.anchor.cameras, [float(self.times[frame])], size_a, kind="anchor")
                render = a_view.rgb.reshape(num_a, size_a, size_a, 3).permute(0, 3, 1, 2)  # (A, 3, H, W)
                term, parts_a = anchor_loss_terms(
                    render,
                    target,
                    self.lpips,
                    lpips_weight=w.anchor_lpips,
                    dssim_weight=w.anchor_dssim,
                    l1_weight=w.anchor_l1,
                )
                terms.append(term)
                metrics.update({f"loss/{k}": v for k, v in parts_a.items()})
                with torch.no_grad():
                    mse = (render - target).pow(2).mean().clamp(min=1e-10)
                    metrics["psnr/anchor"] = -10.0 * torch.log10(mse)
            stepped |= self.backprop.backward(a_view, [term], phase="anchor")
            del a_view, render
        # 7. Reconstruction term (ours, off in the paper's recipe): random rays over every anchor view × frame.
        lam_rgb, lam_mask = w.reconstruction_rgb(step), w.reconstruction_mask(step)
        if self.reconstruction is not None and (lam_rgb > 0 or lam_mask > 0):
            with self._phase("reconstruction"):
                term, parts = self._reconstruction_term(lam_rgb, lam_mask)
                metrics.update(parts)
            terms.append(term)
            stepped |= self.backprop.finish_batch(term)
        # 8. Step.
        total = torch.zeros((), device=self.device)
        for term in terms:
            total = total + term
        with self._phase("backward_step"):
            stepped |= self.backprop.finish(total)
            if stepped:
                set_learning_rates(self.optimizer, cfg.optimizer, step, cfg.num_steps)
                self.optimizer.step()
        self.step += 1
        metrics["loss/total"] = total.detach()
        metrics["samples_per_ray"] = num_samples / max(1, num_rays)
        return metrics

    def _sds_phase(
        self, views: SDSViews, size: int, sds_on: bool, lam_sparsity: float, lam_opaque: float, metrics: dict
    ) -> tuple[list[Tensor], bool]:
        """Render the SDS views × every timestamp; 4D-aware SDS (eq. 10) when `sds_on`, and the opacity regularisers
        with their weights. Returns the weighted terms and whether a gradient already reached the field."""
        cfg, step = self.config, self.step
        with self._phase("sds_render"):
            sds_view = self.backprop.render(views.cameras, self.times.tolist(), size, kind="sds")
        opacity = sds_view.opacity
        # (F·V·H·W, 3) → (F, V, 3, H, W)
        rgb = sds_view.rgb.reshape(self.num_frames, len(views.cameras), size, size, 3).permute(0, 1, 4, 2, 3)
        sds_terms: list[Tensor] = []
        with self._phase("guidance"):
            if sds_on:
                assert self.guidance is not None and self.conditioning is not None
                sds = self.guidance.at_step(rgb, self.conditioning, views, cfg, step, self.generator)
                sds_terms.append(cfg.loss_weights.sds * sds.loss)
                metrics["loss/sds"] = sds.loss.detach()
            if lam_sparsity > 0:
                term = sparsity_loss(opacity)
                sds_terms.append(lam_sparsity * term)
                metrics["loss/sparsity"] = term.detach()
            if lam_opaque > 0:
                term = opaque_loss(opacity)
                sds_terms.append(lam_opaque * term)
                metrics["loss/opaque"] = term.detach()
        reached = self.backprop.backward(sds_view, sds_terms, phase="sds")
        return sds_terms, reached

    def _reconstruction_term(self, lam_rgb: float, lam_mask: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted reconstruction loss of one random ray batch (with autograd) and its logged parts."""
        assert self.reconstruction is not None
        batch = self.reconstruction.sample(self.config.reconstruction.rays_per_step, self.generator)
        samples = self._sample(
            batch.rays, batch.times, stratified=True, with_values=False, with_rgb=False, kind="reconstruction"
        )
        out = composite(self.field, batch.rays, batch.times, samples, step_size=self.step_size)
        assert out.rgb is not None
        return reconstruction_loss(out.rgb, out.opacity, batch, lam_rgb, lam_mask)

    def fit(
        self,
        num_steps: int,
        *,
        checkpoint_dir: Path | None = None,
        inputs_sha256: str = "",
        on_metrics: Callable[[int, dict[str, float]], None] | None = None,
        on_validate: Callable[[int], None] | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> dict[str, float]:
        """Train until `self.step == num_steps`, resuming from `checkpoint_dir` when it holds this run's checkpoint.

        A checkpoint resumes only the run that wrote it: same config and same `inputs_sha256`. Any other one (another
        config, other inputs, another layout, unreadable) is removed with a warning and training starts fresh.

        Args:
            num_steps: the step count to reach.
            checkpoint_dir: folder for `checkpoint.safetensors` (written atomically every
                `checkpoint_every_steps` and at the end); None trains without checkpoints.
            inputs_sha256: content hash of every input the run reads (`stages.common.fingerprint`), stored in
                the checkpoint and compared on resume.
            on_metrics: called every `log_every_steps` with (step, metrics); the metrics are read from the device
                only then. A resumed run first replays the steps its checkpoint logged.
            on_validate: called every `validate_every_steps` with the step.
            on_step: called after every step with the trainer (benchmarks observe the field through it; an
                exception it raises ends the training).

        Raises:
            StageError: a loss term or a parameter became NaN or infinite (names the step and the term).
        """
        return fit(
            self,
            num_steps,
            checkpoint_dir=checkpoint_dir,
            inputs_sha256=inputs_sha256,
            on_metrics=on_metrics,
            on_validate=on_validate,
            on_step=on_step,
        )

    # -- checkpoints (stages.distill.checkpoint) ---------------------------------------------------------

    def save_checkpoint(self, path: Path, *, inputs_sha256: str = "", metrics: dict[str, float] | None = None) -> None:
        save_checkpoint(self, path, inputs_sha256=inputs_sha256, metrics=metrics)

    def load_checkpoint(self, path: Path, *, inputs_sha256: str = "") -> dict[str, float]:
        return load_checkpoint(self, path, inputs_sha256=inputs_sha256)
