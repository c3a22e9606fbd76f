"""The optimisation loop of the 4D stage: plain torch, one function per iteration, atomic resumable checkpoints.

Spec §5 (paper eq. 12): L = L_sds + L_anchor + λ3 L_orient + λ4 L_opacity + λ5 L_sparse, AdamW (§5.4). Every
random draw (cameras, stratified offsets, timesteps, noise, posterior samples, anchor frame, occupancy jitter) comes
from one CPU generator whose state is checkpointed with the field, the optimiser state, the occupancy grid and the
step, so a run resumed from a checkpoint continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from stages.common.cameras import OrbitCamera
from stages.common.config import config_sha256
from stages.common.errors import StageError
from stages.common.logs import progress
from stages.common.lpips import LPIPSVGG
from stages.distill.cameras import Rays, camera_rays, sample_sds_views
from stages.distill.config import DistillConfig, OptimizerConfig
from stages.distill.fields import DynamicNeRFField
from stages.distill.guidance import FourDMGuidance, GuidanceConditioning
from stages.distill.host import to_device
from stages.distill.losses import anchor_loss_terms, opaque_loss, orientation_loss, sparsity_loss
from stages.distill.renderer import (
    DeferredRender,
    OccupancyGrid,
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

CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class AnchorTarget:
    """The anchor video (spec §5.2): frames (F, 3, H, W) in [0, 1] on white, seen from `camera`; optionally more
    mvgen views used the same way (`cameras.extra_anchor_views`, ours): `extra_frames` (E, F, 3, H, W) seen from
    `extra_cameras` (E)."""

    frames: Tensor
    camera: OrbitCamera
    extra_frames: Tensor | None = None
    extra_cameras: list[OrbitCamera] = dataclass_field(default_factory=list)

    def __post_init__(self) -> None:
        count = 0 if self.extra_frames is None else self.extra_frames.shape[0]
        if count != len(self.extra_cameras):
            raise ValueError(f"AnchorTarget: {count} extra anchor videos but {len(self.extra_cameras)} cameras")
        if self.extra_frames is not None and self.extra_frames.shape[1:] != self.frames.shape:
            raise ValueError(
                f"AnchorTarget: extra anchor videos {tuple(self.extra_frames.shape[1:])} differ from the anchor video "
                f"{tuple(self.frames.shape)}"
            )

    @property
    def cameras(self) -> list[OrbitCamera]:
        return [self.camera, *self.extra_cameras]

    def frame(self, index: int) -> Tensor:
        """(1 + E, 3, H, W): frame `index` of the anchor video and of each extra one, in `cameras` order."""
        first = self.frames[index : index + 1]
        if self.extra_frames is None:
            return first
        return torch.cat([first, self.extra_frames[:, index]])


def build_field(cfg: DistillConfig) -> DynamicNeRFField:
    return DynamicNeRFField(**field_kwargs(cfg))


def field_kwargs(cfg: DistillConfig) -> dict:
    """The `DynamicNeRFField` constructor arguments of a config (what `field_config.json` stores)."""
    f = cfg.field
    return dict(
        num_levels=f.num_levels,
        features_per_level=f.features_per_level,
        log2_hashmap_size=f.log2_hashmap_size,
        base_resolution=f.base_resolution,
        per_level_scale=f.per_level_scale,
        hidden_dim=f.hidden_dim,
        num_hidden_layers=f.num_hidden_layers,
        blob_density=f.blob_density,
        blob_radius=f.blob_radius,
        bbox_radius=f.bbox_radius,
        backend=f.backend,
    )


def build_optimizer(field: DynamicNeRFField, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW with the grids at `grid_lr` and the MLPs at `mlp_lr` (spec §5.4)."""
    groups = [
        {"params": field.grid_parameters(), "lr": cfg.grid_lr},
        {"params": field.mlp_parameters(), "lr": cfg.mlp_lr},
    ]
    return torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_occupancy(cfg: DistillConfig) -> OccupancyGrid:
    r = cfg.renderer
    return OccupancyGrid(
        r.occupancy_resolution,
        cfg.field.bbox_radius,
        r.occupancy_ema_decay,
        r.occupancy_threshold,
        r.occupancy_warmup_steps,
    )


def metrics_to_floats(metrics: dict[str, Tensor | float]) -> dict[str, float]:
    """Logged terms as Python floats: the tensors are read from the device in one transfer."""
    names = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).tolist() if names else []
    floats = dict(zip(names, values, strict=True))
    return {k: floats[k] if k in floats else float(v) for k, v in metrics.items()}


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
        if guidance is not None and config.guidance.offload_encoders:
            guidance.offload_encoders()

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
            chunk=r.march_chunk,
            eval_chunk=r.eval_chunk,
            early_stop_block=r.early_stop_block,
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
        chunk = self.config.renderer.eval_chunk
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

    def _backward_pixels(
        self, render: DeferredRender, loss: Tensor, pixels: Tensor, opacity: Tensor | None, *, phase: str
    ) -> bool:
        """Deferred back-propagation: `loss` → gradients at the leaves `pixels` (N, 3) and `opacity` (N,), then
        through the re-evaluated samples chunk by chunk into the field. Returns whether any gradient flowed."""
        if not loss.requires_grad:
            return False
        with self._phase(f"{phase}_pixel_backward"):
            loss.backward()
        g_rgb = pixels.grad
        g_opacity = opacity.grad if opacity is not None else None

        def chunk_loss(out: RenderOutput, rays: slice) -> Tensor:
            total = out.rgb.new_zeros(())
            if g_rgb is not None:
                total = total + (out.rgb * g_rgb[rays]).sum()
            if g_opacity is not None:
                total = total + (out.opacity * g_opacity[rays]).sum()
            return total

        with self._phase(f"{phase}_field_backward"):
            render.backward(chunk_loss, chunk_samples=self.config.renderer.grad_chunk_samples)
        return True

    # -- one iteration -------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the logged terms (reading them is one host sync)."""
        return metrics_to_floats(self.step_tensors())

    def step_tensors(self) -> dict[str, Tensor | float]:
        """One optimisation step; returns the logged terms as device tensors (no host sync for them).

        `renderer.grad_chunk_samples` > 0 runs the deferred path: every render (SDS, orientation, anchor) is made
        without autograd, its losses are back-propagated to its pixels, then into the field in chunks. The random
        draws, the samples and the gradients are those of the direct path (within float tolerance).
        """
        cfg, w, step = self.config, self.config.loss_weights, self.step
        cams = cfg.cameras
        deferred = cfg.renderer.grad_chunk_samples > 0
        metrics: dict[str, Tensor | float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        terms: list[Tensor] = []  # weighted loss terms, in the order they are added to the total
        stepped = False  # deferred path: has any gradient reached the field
        # 1. Occupancy grid, shared over time.
        if step % cfg.renderer.occupancy_update_every_steps == 0:
            with self._phase("occupancy"):
                self.occupancy.update(step, self._max_density, self.step_size, self.generator)
        # 2. SDS renders: V random orthogonal views × all F timestamps.
        size = cfg.sds_resolution(step)
        views = sample_sds_views(
            self.generator,
            num_views=cams.num_views,
            elevation_min_deg=cams.elevation_min_deg,
            elevation_max_deg=cams.elevation_max_deg,
            radius=cams.radius,
            fov_y_deg=cams.fov_y_deg,
        )
        with self._phase("sds_render"):
            if deferred:
                sds_render = self.render_deferred(
                    views.cameras, self.times.tolist(), size, stratified=True, kind="sds"
                )
                assert sds_render.rgb is not None
                pixels = sds_render.rgb.requires_grad_(True)  # leaves: the losses' gradients land here
                opacity = sds_render.opacity.requires_grad_(True)
            else:
                out = self.render(views.cameras, self.times.tolist(), size, stratified=True, kind="sds")
                pixels, opacity = out.rgb, out.opacity
        num_rays, num_samples = opacity.numel(), self.render_stats["sds"]["samples"]
        rgb = pixels.reshape(self.num_frames, cams.num_views, size, size, 3).permute(0, 1, 4, 2, 3)  # (F, V, 3, H, W)
        sds_terms: list[Tensor] = []
        # 3. 4D-aware SDS (eq. 10).
        with self._phase("guidance"):
            if w.sds > 0:
                assert self.guidance is not None and self.conditioning is not None
                steps = self.guidance.num_train_timesteps
                sds = self.guidance(
                    rgb,
                    self.conditioning,
                    azimuths_deg=views.azimuths_deg,
                    elevation_deg=views.elevation_deg,
                    min_step=int(steps * cfg.guidance.min_step_percent(step)),
                    max_step=int(steps * cfg.guidance.max_step_percent(step)),
                    generator=self.generator,
                    vae_chunk=cfg.guidance.vae_chunk,
                )
                sds_terms.append(w.sds * sds.loss)
                metrics["loss/sds"] = sds.loss.detach()
            # 4. Opacity regularisers on the SDS renders.
            if (lam := w.sparsity(step)) > 0:
                term = sparsity_loss(opacity)
                sds_terms.append(lam * term)
                metrics["loss/sparsity"] = term.detach()
            if (lam := w.opaque(step)) > 0:
                term = opaque_loss(opacity)
                sds_terms.append(lam * term)
                metrics["loss/opaque"] = term.detach()
            terms += sds_terms
        if deferred and sds_terms:
            pixel_loss = sds_terms[0]
            for term in sds_terms[1:]:
                pixel_loss = pixel_loss + term
            stepped |= self._backward_pixels(sds_render, pixel_loss, pixels, opacity, phase="sds")
            del sds_render, pixels, opacity, rgb, pixel_loss
        # 5. Orientation of analytic normals: the same views at one random timestamp.
        if (lam := w.orient(step)) > 0:
            frame = int(torch.randint(self.num_frames, (1,), generator=self.generator))
            with self._phase("orient"):
                if deferred:
                    normals = self.render_deferred(
                        views.cameras, [float(self.times[frame])], size, stratified=True, with_rgb=False, kind="orient"
                    )
                    count = (normals.opacity > 0).sum().clamp(min=1)
                    parts: list[Tensor] = []

                    def orient_chunk(out: RenderOutput, rays: slice) -> Tensor:
                        assert out.orient is not None
                        part = out.orient.sum() / count
                        parts.append(part.detach())
                        return lam * part

                    normals.backward(orient_chunk, chunk_samples=cfg.renderer.orient_chunk_samples, with_orient=True)
                    term = torch.stack(parts).sum() if parts else normals.opacity.new_zeros(())
                    stepped |= bool(parts)
                    del normals
                else:
                    normal_pass = self.render(
                        views.cameras,
                        [float(self.times[frame])],
                        size,
                        stratified=True,
                        with_orient=True,
                        with_rgb=False,
                        kind="orient",
                    )
                    assert normal_pass.orient is not None
                    term = orientation_loss(normal_pass.orient, normal_pass.opacity)
                terms.append(lam * term)
                metrics["loss/orient"] = term.detach()
        # 6. Anchor loss (eq. 11, plus the optional pixel L1): the anchor view (and any extra anchor views) at one
        # random frame, at the anchor video's size.
        if w.anchor_lpips > 0 or w.anchor_dssim > 0 or w.anchor_l1 > 0:
            frame = int(torch.randint(self.num_frames, (1,), generator=self.generator))
            with self._phase("anchor"):
                target = to_device(self.anchor.frame(frame), self.device)  # (A, 3, H, W)
                num_a, size_a = target.shape[0], target.shape[-1]
                time_a = [float(self.times[frame])]
                if deferred:
                    cams_a = self.anchor.cameras
                    a_render = self.render_deferred(cams_a, time_a, size_a, stratified=True, kind="anchor")
                    assert a_render.rgb is not None
                    a_pixels = a_render.rgb.requires_grad_(True)
                else:
                    a_pixels = self.render(self.anchor.cameras, time_a, size_a, stratified=True, kind="anchor").rgb
                render = a_pixels.reshape(num_a, size_a, size_a, 3).permute(0, 3, 1, 2)  # (A, 3, H, W)
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
            if deferred:
                stepped |= self._backward_pixels(a_render, term, a_pixels, None, phase="anchor")
                del a_render, a_pixels, render
        # 7. Step.
        total = torch.zeros((), device=self.device)
        for term in terms:
            total = total + term
        with self._phase("backward_step"):
            if not deferred and total.requires_grad:
                total.backward()
                stepped = True
            if stepped:
                self.optimizer.step()
        self.step += 1
        metrics["loss/total"] = total.detach()
        metrics["samples_per_ray"] = num_samples / max(1, num_rays)
        return metrics

    def fit(
        self,
        num_steps: int,
        *,
        checkpoint_dir: Path | None = None,
        on_metrics: Callable[[int, dict[str, float]], None] | None = None,
        on_validate: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """Train until `self.step == num_steps`, resuming from `checkpoint_dir` when it holds a checkpoint.

        Args:
            num_steps: the step count to reach.
            checkpoint_dir: folder for `checkpoint.safetensors` (written atomically every
                `checkpoint_every_steps` and at the end); None trains without checkpoints.
            on_metrics: called every `log_every_steps` with (step, metrics); the metrics are read from the device
                only then.
            on_validate: called every `validate_every_steps` with the step.
        """
        cfg = self.config
        if checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT_FILE).is_file():
            self.load_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE)
            log.info("resumed from %s at step %d", checkpoint_dir, self.step)
        metrics: dict[str, Tensor | float] = {}
        for _ in progress(range(self.step, num_steps), desc="distill", total=num_steps - self.step):
            metrics = self.step_tensors()
            if on_metrics is not None and (self.step % cfg.log_every_steps == 0 or self.step == num_steps):
                on_metrics(self.step, metrics_to_floats(metrics))
            if on_validate is not None and self.step % cfg.validate_every_steps == 0:
                on_validate(self.step)
            if checkpoint_dir is not None and (self.step % cfg.checkpoint_every_steps == 0 or self.step == num_steps):
                self.save_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE)
        return metrics_to_floats(metrics)

    # -- checkpoints ---------------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything a resume needs, as a flat name → tensor mapping (safetensors, no pickles)."""
        state = {f"field.{k}": v for k, v in self.field.state_dict().items()}
        state.update({f"occupancy.{k}": v for k, v in self.occupancy.state_dict().items()})
        for index, param_state in self.optimizer.state_dict()["state"].items():
            for key, value in param_state.items():
                state[f"optimizer.{index}.{key}"] = value.reshape(-1) if value.ndim == 0 else value
        state["rng.cpu"] = self.generator.get_state()
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint through a temp file and a rename: a kill at any moment leaves the old or the new."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        meta = {"step": str(self.step), "format": "fourd.distill.ckpt/v1", "config_sha256": config_sha256(self.config)}
        save_file(self.state_tensors(), str(tmp), metadata=meta)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> None:
        """Restore a `save_checkpoint` file into this trainer (same config).

        Raises:
            StageError: the file is unreadable or was written for another field layout.
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any reader failure means the same to the user
            raise StageError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
        if meta.get("format") != "fourd.distill.ckpt/v1":
            raise StageError(f"{path}: not a distill checkpoint")
        if meta.get("config_sha256") != config_sha256(self.config):
            raise StageError(f"{path}: written with another config; use a fresh --checkpoint folder to start over")
        field_state = {k[len("field.") :]: v for k, v in state.items() if k.startswith("field.")}
        try:
            self.field.load_state_dict(field_state)
        except RuntimeError as err:
            raise StageError(f"{path}: checkpoint does not match the configured field ({err})") from None
        self.occupancy.load_state_dict(
            {k[len("occupancy.") :]: v for k, v in state.items() if k.startswith("occupancy.")}
        )
        template = self.optimizer.state_dict()
        params: dict[int, dict[str, Tensor]] = {}
        for key, value in state.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                params.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
        self.optimizer.load_state_dict({"state": params, "param_groups": template["param_groups"]})
        self.generator.set_state(state["rng.cpu"])
        self.step = int(meta["step"])
