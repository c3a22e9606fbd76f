"""GaussianTrainer: the distill optimisation with 4D Gaussians in place of the NeRF (ours; `field.representation`).

The same loss terms, weights and schedules as `stages.distill.trainer.Trainer`, on whole rasterised images:
1. SDS: the V random SDS views (`draw_sds_views`, the same draws) × every timestamp rendered on white at the SDS
   size and passed to `FourDMGuidance` exactly as the NeRF path does; the opacity regularisers on their alphas;
2. the anchor loss (eq. 11, optional L1) on the anchor views at one random frame;
3. the reconstruction term (ours): `reconstruction.rays_per_step / size²` random (view, frame) images of the anchor
   videos a step (at least one), the colour-on-white MSE and the alpha-vs-mask MSE with their weights.
Orientation needs density normals and is refused by the config. Every random draw comes from one CPU generator,
checkpointed with the Gaussians, the Adam state and the step (stages.distill.checkpoint; no occupancy grid), so a
resumed run continues bit for bit. Adam has one group per kind of parameter (3DGS), every rate decaying as
`lr·final_lr_factor^(step/num_steps)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stages.common.cameras import OrbitCamera
from stages.common.lpips import LPIPSVGG
from stages.distill.anchor import AnchorTarget
from stages.distill.cameras import draw_sds_views
from stages.distill.config import DistillConfig
from stages.distill.fit_loop import fit
from stages.distill.gaussians.field import GaussianField4D
from stages.distill.gaussians.gsplat_backend import rasterize_gsplat, require_gsplat
from stages.distill.gaussians.init import visual_hull_init
from stages.distill.gaussians.rasterize import RasterOutput, camera_matrices, rasterize_torch
from stages.distill.guidance import FourDMGuidance, GuidanceConditioning
from stages.distill.host import to_device
from stages.distill.losses import anchor_loss_terms, opaque_loss, sparsity_loss
from stages.distill.metrics import metrics_to_floats
from stages.distill.reconstruction import pixel_reconstruction_loss

__all__ = ["GaussianTrainer", "ImageRender", "build_gaussian_optimizer", "set_gaussian_learning_rates"]


@dataclass
class ImageRender:
    """Renders flattened as the NeRF's `RenderOutput`: rgb (T·C·H·W, 3), opacity and depth (T·C·H·W,), ordered
    (time, camera, row, column)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor


def _base_rates(config: DistillConfig) -> dict[str, float]:
    g, radius = config.gaussians, config.field.bbox_radius
    return {
        "means": g.means_lr * radius,
        "scales": g.scales_lr,
        "quats": g.quats_lr,
        "opacity": g.opacity_lr,
        "colour": g.colour_lr,
        "motion": g.motion_lr * radius,
    }


def build_gaussian_optimizer(field: GaussianField4D, config: DistillConfig) -> torch.optim.Adam:
    """Adam, one group per kind of parameter at its rate (3DGS), `optimizer.betas`/`eps`, no weight decay."""
    rates = _base_rates(config)
    groups = [{"params": [p], "lr": rates[name], "name": name} for name, p in field.parameter_groups().items()]
    return torch.optim.Adam(groups, betas=config.optimizer.betas, eps=config.optimizer.eps)


def set_gaussian_learning_rates(optimizer: torch.optim.Optimizer, config: DistillConfig, step: int) -> None:
    """Every group's rate at `step`: its base rate · final_lr_factor^(step / num_steps)."""
    scale = config.optimizer.final_lr_factor ** (step / max(1, config.num_steps))
    rates = _base_rates(config)
    for group in optimizer.param_groups:
        group["lr"] = rates[group["name"]] * scale


class GaussianTrainer:
    """Owns the Gaussians, Adam, the generator and the step; `step_tensors` runs one iteration (module docstring).

    Args: as `Trainer`'s, without the field (built here from `config.gaussians` and the anchor masks' visual hull).
    """

    def __init__(
        self,
        config: DistillConfig,
        anchor: AnchorTarget,
        *,
        guidance: FourDMGuidance | None,
        conditioning: GuidanceConditioning | None,
        lpips: LPIPSVGG | None,
        device: torch.device,
    ) -> None:
        w, g = config.loss_weights, config.gaussians
        if w.sds > 0 and (guidance is None or conditioning is None):
            raise ValueError("loss_weights.sds > 0 needs the 4DM guidance and its conditioning")
        if w.anchor_lpips > 0 and lpips is None:
            raise ValueError("loss_weights.anchor_lpips > 0 needs the LPIPS network")
        mask_weight = w.reconstruction_mask
        if anchor.masks is None and max(mask_weight.start_value, mask_weight.end_value) > 0:
            raise ValueError("loss_weights.reconstruction_mask > 0 needs the anchor videos' masks")
        if g.backend == "gsplat":
            require_gsplat(device)
        self.rasterize = rasterize_gsplat if g.backend == "gsplat" else rasterize_torch
        self.config, self.anchor, self.device = config, anchor, device
        self.guidance, self.conditioning, self.lpips = guidance, conditioning, lpips
        if guidance is not None and config.runtime.offload_encoders:
            guidance.offload_encoders()  # as the NeRF trainer: SDS needs only the UNet and the VAE from here on
        self.num_frames = anchor.frames.shape[0]
        self.times = torch.linspace(0.0, 1.0, self.num_frames)
        self.generator = torch.Generator().manual_seed(config.seed)
        start = visual_hull_init(
            g.num_gaussians,
            masks=anchor.masks,
            videos=anchor.videos(),
            cameras=anchor.cameras,
            bbox_radius=config.field.bbox_radius,
            blob_radius=config.field.blob_radius,
            generator=self.generator,
        )
        self.field = GaussianField4D(g.num_gaussians, g.motion_degree)
        self.field.initialise(start.means, start.colours, start.scale)
        self.field.to(device)
        self.optimizer = build_gaussian_optimizer(self.field, config)
        self.occupancy = None  # the checkpoint's NeRF-only part
        self.step = 0
        self.videos = to_device(anchor.videos(), device)  # (A, F, 3, H, W)
        masks = anchor.masks if anchor.masks is not None else torch.ones_like(anchor.videos()[:, :, :1])
        self.masks = to_device(masks, device)  # (A, F, 1, H, W)
        self.white = torch.ones(3, device=device)

    # -- rendering ------------------------------------------------------------------------------------------

    def images(
        self, cameras: Sequence[OrbitCamera], times: Tensor, size: int, background: Tensor | None = None
    ) -> RasterOutput:
        """(T, C, H, W, ·) renders of every time × camera over `background` (white), with autograd."""
        f = self.field
        viewmats, ks = camera_matrices(cameras, size, self.device)
        return self.rasterize(
            f.means_at(to_device(times, self.device)),
            f.unit_quats(),
            f.scales(),
            f.opacities(),
            f.colours(),
            viewmats,
            ks,
            size,
            background=self.white if background is None else background,
        )

    def render(
        self, cameras: list[OrbitCamera], times: list[float], size: int, *, stratified: bool = False, **_: object
    ) -> ImageRender:
        """`Trainer.render`'s interface (benchmarks/distill_quality.py scores either trainer): every (time, camera)
        pair on white, flattened (time, camera, row, column); `stratified` has no meaning for a rasteriser."""
        out = self.images(cameras, torch.tensor(times), size)
        return ImageRender(rgb=out.rgb.reshape(-1, 3), opacity=out.alpha.reshape(-1), depth=out.depth.reshape(-1))

    @torch.no_grad()
    def render_rgba(self, camera: OrbitCamera, time: float, size: int) -> np.ndarray:
        """uint8 (H, W, 4) straight-alpha RGBA, as `export.render_rgba` writes the NeRF's."""
        out = self.images([camera], torch.tensor([time]), size, torch.zeros(3, device=self.device))
        opacity = out.alpha[0, 0].clamp(0.0, 1.0)  # (H, W, 1)
        straight = (out.rgb[0, 0] / opacity.clamp(min=1e-6)).clamp(0.0, 1.0)
        rgba = torch.cat([straight, opacity], dim=-1)
        return (rgba * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()

    # -- one iteration -------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        return metrics_to_floats(self.step_tensors())

    def step_tensors(self) -> dict[str, Tensor | float]:
        """One optimisation step; the logged terms as device tensors."""
        cfg, w, step = self.config, self.config.loss_weights, self.step
        metrics: dict[str, Tensor | float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        # 1. SDS renders: V random orthogonal views × all F timestamps, and the opacity regularisers on them.
        size = cfg.sds_resolution(step)
        views = draw_sds_views(self.generator, cfg.cameras)
        sds_on = w.sds > 0 and step >= cfg.guidance.start_step
        lam_sparsity, lam_opaque = w.sparsity(step), w.opaque(step)
        if sds_on or lam_sparsity > 0 or lam_opaque > 0:
            out = self.images(views.cameras, self.times, size)
            if sds_on:
                assert self.guidance is not None and self.conditioning is not None
                rgb = out.rgb.permute(0, 1, 4, 2, 3)  # (F, V, H, W, 3) → (F, V, 3, H, W)
                sds = self.guidance.at_step(rgb, self.conditioning, views, cfg, step, self.generator)
                total = total + w.sds * sds.loss
                metrics["loss/sds"] = sds.loss.detach()
            if lam_sparsity > 0:
                term = sparsity_loss(out.alpha)
                total = total + lam_sparsity * term
                metrics["loss/sparsity"] = term.detach()
            if lam_opaque > 0:
                term = opaque_loss(out.alpha)
                total = total + lam_opaque * term
                metrics["loss/opaque"] = term.detach()
        # 2. Anchor loss (eq. 11, plus the optional L1): the anchor views at one random frame.
        if w.anchor_lpips > 0 or w.anchor_dssim > 0 or w.anchor_l1 > 0:
            frame = int(torch.randint(self.num_frames, (1,), generator=self.generator))
            target = self.videos[:, frame]  # (A, 3, H, W)
            render = self.images(self.anchor.cameras, self.times[frame : frame + 1], target.shape[-1]).rgb[0]
            render = render.permute(0, 3, 1, 2)  # (A, H, W, 3) → (A, 3, H, W)
            term, parts = anchor_loss_terms(
                render,
                target,
                self.lpips,
                lpips_weight=w.anchor_lpips,
                dssim_weight=w.anchor_dssim,
                l1_weight=w.anchor_l1,
            )
            total = total + term
            metrics.update({f"loss/{k}": v for k, v in parts.items()})
            with torch.no_grad():
                metrics["psnr/anchor"] = -10.0 * torch.log10((render - target).pow(2).mean().clamp(min=1e-10))
        # 3. Reconstruction term (ours): random (view, frame) images of the anchor videos.
        lam_rgb, lam_mask = w.reconstruction_rgb(step), w.reconstruction_mask(step)
        if cfg.reconstruction.rays_per_step > 0 and (lam_rgb > 0 or lam_mask > 0):
            term, parts = self._reconstruction_term(lam_rgb, lam_mask)
            total = total + term
            metrics.update(parts)
        # 4. Step.
        if total.requires_grad:
            total.backward()
            set_gaussian_learning_rates(self.optimizer, cfg, step)
            self.optimizer.step()
        self.step += 1
        metrics["loss/total"] = total.detach()
        return metrics

    def _reconstruction_term(self, lam_rgb: float, lam_mask: float) -> tuple[Tensor, dict[str, Tensor]]:
        num_cams, num_frames, _, size, _ = self.videos.shape
        count = max(1, self.config.reconstruction.rays_per_step // (size * size))
        picks = torch.randint(num_cams * num_frames, (count,), generator=self.generator).tolist()
        rgb, alpha, target_rgb, target_mask = [], [], [], []
        for pick in picks:
            frame, cam = divmod(pick, num_cams)
            out = self.images([self.anchor.cameras[cam]], self.times[frame : frame + 1], size)
            rgb.append(out.rgb.reshape(-1, 3))
            alpha.append(out.alpha.reshape(-1))
            target_rgb.append(self.videos[cam, frame].permute(1, 2, 0).reshape(-1, 3))  # (3, H, W) → (H·W, 3)
            target_mask.append(self.masks[cam, frame].reshape(-1))
        return pixel_reconstruction_loss(
            torch.cat(rgb), torch.cat(alpha), torch.cat(target_rgb), torch.cat(target_mask), lam_rgb, lam_mask
        )

    def fit(
        self,
        num_steps: int,
        *,
        checkpoint_dir: Path | None = None,
        inputs_sha256: str = "",
        on_metrics: Callable[[int, dict[str, float]], None] | None = None,
        on_validate: Callable[[int], None] | None = None,
        on_step: Callable[[GaussianTrainer], None] | None = None,
    ) -> dict[str, float]:
        """`Trainer.fit` (its docstring documents the arguments and the checkpoint rules)."""
        return fit(
            self,
            num_steps,
            checkpoint_dir=checkpoint_dir,
            inputs_sha256=inputs_sha256,
            on_metrics=on_metrics,
            on_validate=on_validate,
            on_step=on_step,
        )
