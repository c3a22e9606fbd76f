"""FourDMGuidance: 4D-aware score distillation through 4DM, in MVDream's x0-reconstruction form (spec §5.1).

Paper eq. 10: ∇θ L ≈ E[2(V_r − V̂_0) ∂V_r/∂θ], V̂_0 being 4DM's clean estimate of the noised latents of the renders,
conditioned on the input video, the text and the cameras. Per call (threestudio
`multiview_video_diffusion_guidance.py` of 4Diffusion):
1. renders (F frames × V views) are resized to the VAE's resolution and encoded, z = s·E(2·rgb − 1) (posterior
   sample, gradients flow to the renders);
2. one timestep t ~ U{min_step, …, max_step} for the whole batch; z_t = √ᾱ_t z + √(1−ᾱ_t) ε;
3. without gradients, the UNet runs both branches, rows ordered (b f v) with the reference slot last in each
   frame: cond = prompt, the frame's CLIP tokens, the frame's VAE latent in the reference slot; uncond =
   negative prompt, zero tokens, zero latent; cameras are the same in both;
4. ε̂ = ε_u + s·(ε_c − ε_u) on the real views (reference slots dropped);
5. x̂0 = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, and likewise x̂0_c from ε_c; std rescale
   x̂0 ← r·x̂0·std(x̂0_c)/std(x̂0) + (1 − r)·x̂0 over all latents (r = 0.2);
6. L = ½‖z − sg(x̂0)‖² summed, divided by the number of latents (F·V).
A 4DM whose scheduler says `prediction_type: v_prediction` (a demo-model option; 4DM itself predicts ε) gives v
instead of ε: CFG combines the v's, and x̂0 = √ᾱ_t z_t − √(1−ᾱ_t) v̂ (x̂0_c likewise) replaces step 5's formula.
Only the public API of stages.mvgen is used: `FourDMPipeline`'s components and encoders.

Memory option `vae_chunk` > 0: step 1 runs without autograd (the UNet needs every latent before any gradient
exists), and the gradient w.r.t. the renders, (z − x̂0)/N pulled back through the encoder, is computed by
re-encoding `vae_chunk` renders at a time with autograd (same posterior noise). The returned loss has the same
value and the same gradient w.r.t. the renders; only the encoder's activations of one chunk are alive at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stages.common.cameras import fourdm_camera_vectors
from stages.distill.cameras import SDSViews
from stages.distill.config import OFFICIAL_SDS_NEGATIVE_PROMPT, DistillConfig
from stages.distill.host import to_device
from stages.mvgen import FourDMPipeline, predicted_x0, prediction_type

__all__ = ["FourDMGuidance", "SDSOutput", "GuidanceConditioning", "OFFICIAL_SDS_NEGATIVE_PROMPT"]


@dataclass
class GuidanceConditioning:
    """What stays fixed over the optimisation: text tokens (2, 77, D) [cond, uncond], CLIP-vision tokens of the
    input frames (F, 257, E), their VAE latents (F, C, h, w)."""

    text: Tensor
    image_tokens: Tensor
    ref_latents: Tensor


@dataclass
class SDSOutput:
    """loss: scalar, gradients to the renders; target: x̂0 (F·V, C, h, w); timestep: the t used."""

    loss: Tensor
    target: Tensor
    latents: Tensor
    timestep: int


class FourDMGuidance:
    """x0-reconstruction SDS with classifier-free guidance and std rescaling through a frozen 4DM.

    Args:
        pipe: a loaded `FourDMPipeline` (frozen; moved to the device and dtype by the caller).
        guidance_scale: CFG weight s (5).
        std_rescale: r of the x̂0 std rescale (0.2); 0 disables it.
    """

    def __init__(self, pipe: FourDMPipeline, *, guidance_scale: float = 5.0, std_rescale: float = 0.2) -> None:
        self.pipe, self.guidance_scale, self.std_rescale = pipe, guidance_scale, std_rescale
        vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.image_size = pipe.unet.config.sample_size * vae_factor
        self.latent_size = pipe.unet.config.sample_size
        alphas = pipe.scheduler.alphas_cumprod.to(torch.float32)
        self.alphas_cumprod = alphas
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.prediction_type = prediction_type(pipe.scheduler)  # checked before the first step

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def prepare(
        self, frames: np.ndarray, prompt: str, negative_prompt: str, generator: torch.Generator | None
    ) -> GuidanceConditioning:
        """Encode the fixed conditioning once.

        Args:
            frames: uint8 (F, H, W, 3) input frames composited on white, H = W = `image_size`.
            prompt, negative_prompt: the two branches' texts.
            generator: for the reference latents' posterior sample.
        """
        text = self.pipe.encode_text([prompt, negative_prompt])
        return GuidanceConditioning(
            text=text,
            image_tokens=self.pipe.encode_images(frames),
            ref_latents=self.pipe.encode_latents(frames, generator),
        )

    def offload_encoders(self) -> None:
        """Move the text and image encoders to the CPU: the SDS needs only the UNet and the VAE once `prepare` has
        run (call it after `prepare`; move them back before preparing again)."""
        self.pipe.text_encoder.to("cpu")
        self.pipe.image_encoder.to("cpu")

    def posterior_noise(self, count: int, generator: torch.Generator | None) -> Tensor:
        """(count, C, h, w) float32 standard normal draws for the posterior samples of `count` renders (CPU)."""
        shape = (count, self.pipe.vae.config.latent_channels, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def encode(self, rgb: Tensor, generator: torch.Generator | None) -> Tensor:
        """(N, 3, H, W) renders in [0, 1] → (N, C, h, w) latents z = s·E(2·rgb − 1), with gradients."""
        return self.encode_with_noise(rgb, self.posterior_noise(rgb.shape[0], generator))

    def encode_with_noise(self, rgb: Tensor, noise: Tensor) -> Tensor:
        """`encode` with given posterior draws (N, C, h, w): z = s·(μ + σ·noise)."""
        vae = self.pipe.vae
        x = F.interpolate(rgb, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        posterior = vae.encode((x * 2.0 - 1.0).to(vae.dtype)).latent_dist
        noise = to_device(noise, posterior.mean.device).to(posterior.mean.dtype)
        return (posterior.mean + posterior.std * noise).float() * vae.config.scaling_factor

    def at_step(
        self,
        rgb: Tensor,
        cond: GuidanceConditioning,
        views: SDSViews,
        config: DistillConfig,
        step: int,
        generator: torch.Generator,
    ) -> SDSOutput:
        """SDS as a training step calls it: the views' cameras, the timestep range the config's schedules give at
        `step`, the config's `runtime.vae_chunk`."""
        steps = self.num_train_timesteps
        return self(
            rgb,
            cond,
            azimuths_deg=views.azimuths_deg,
            elevation_deg=views.elevation_deg,
            min_step=int(steps * config.guidance.min_step_percent(step)),
            max_step=int(steps * config.guidance.max_step_percent(step)),
            generator=generator,
            vae_chunk=config.runtime.vae_chunk,
        )

    def __call__(
        self,
        rgb: Tensor,
        cond: GuidanceConditioning,
        *,
        azimuths_deg: list[float],
        elevation_deg: float,
        min_step: int,
        max_step: int,
        generator: torch.Generator,
        vae_chunk: int = 0,
    ) -> SDSOutput:
        """SDS on renders (module docstring).

        Args:
            rgb: (F, V, 3, H, W) renders in [0, 1]: F timestamps (the input's frames) × V views.
            cond: from `prepare`.
            azimuths_deg: the V views' azimuths (our convention); elevation_deg: their shared elevation.
            min_step, max_step: inclusive range of the timestep.
            generator: CPU generator for t, ε and the posterior sample (reproducible, resumable).
            vae_chunk: 0 encodes with one autograd graph; > 0 re-encodes this many renders at a time for the
                gradient (module docstring; same value and gradient).
        """
        num_frames, num_views = rgb.shape[:2]
        slots = num_views + 1  # + reference slot
        device, dtype = self.device, self.pipe.dtype
        # 1. Latents of the renders, rows (f v).
        flat = rgb.reshape(num_frames * num_views, *rgb.shape[2:])
        posterior_noise = self.posterior_noise(flat.shape[0], generator)
        chunked = vae_chunk > 0 and rgb.requires_grad
        if chunked:
            with torch.no_grad():
                z = torch.cat(
                    [
                        self.encode_with_noise(flat[i : i + vae_chunk], posterior_noise[i : i + vae_chunk])
                        for i in range(0, flat.shape[0], vae_chunk)
                    ]
                )
        else:
            z = self.encode_with_noise(flat, posterior_noise)  # (F·V, C, h, w)
        # 2. One timestep, independent noise per latent.
        t = int(torch.randint(min_step, max_step + 1, (1,), generator=generator))
        noise = to_device(torch.randn(z.shape, generator=generator, dtype=torch.float32), device)
        alpha = to_device(self.alphas_cumprod[t], device)
        with torch.no_grad():
            z_t = alpha.sqrt() * z.detach() + (1 - alpha).sqrt() * noise
            # 3. Both branches, rows (b f v); the reference slot's latent is overwritten inside the UNet.
            grid = z_t.reshape(num_frames, num_views, *z.shape[1:])
            grid = torch.cat([grid, torch.zeros_like(grid[:, :1])], dim=1)  # (F, V+1, C, h, w)
            sample = grid.reshape(num_frames * slots, *z.shape[1:]).repeat(2, 1, 1, 1)  # (2·F·(V+1), C, h, w)
            rows = num_frames * slots
            text = torch.cat([cond.text[0:1].expand(rows, -1, -1), cond.text[1:2].expand(rows, -1, -1)])
            tokens = cond.image_tokens.repeat_interleave(slots, dim=0)  # (F·(V+1), 257, E), frame f's tokens
            tokens = torch.cat([tokens, torch.zeros_like(tokens)])
            ip_latents = torch.cat([cond.ref_latents, torch.zeros_like(cond.ref_latents)])
            camera = to_device(torch.from_numpy(fourdm_camera_vectors(azimuths_deg, elevation_deg)), device)
            camera = camera.repeat(2 * num_frames, 1)  # (2·F·(V+1), 16)
            timestep = torch.full((2 * rows,), t, device=device, dtype=torch.long)
            eps = self.pipe.unet(
                sample.to(dtype),
                timestep,
                text.to(dtype),
                camera.to(dtype),
                tokens.to(dtype),
                ip_latents.to(dtype),
                num_frames,
                slots,
            ).float()
            # 4. CFG on the real views only.
            eps = eps.reshape(2, num_frames, slots, *z.shape[1:])[:, :, :num_views].reshape(2, *z.shape)
            eps_cond, eps_uncond = eps[0], eps[1]
            eps_cfg = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
            # 5. x0 estimates and the std rescale (statistics over all F·V latents jointly, spec §2.8 quirk 2).
            x0 = predicted_x0(self.prediction_type, z_t, eps_cfg, alpha)  # eps_* hold v for a v model
            if self.std_rescale > 0:
                x0_cond = predicted_x0(self.prediction_type, z_t, eps_cond, alpha)
                factor = (x0_cond.std() + 1e-8) / (x0.std() + 1e-8)
                x0 = self.std_rescale * x0 * factor + (1 - self.std_rescale) * x0
        # 6. x0-reconstruction loss; its gradient w.r.t. z is (z − x̂0)/N.
        loss = 0.5 * F.mse_loss(z, x0, reduction="sum") / z.shape[0]
        if chunked:
            grad = self._chunked_gradient(flat, posterior_noise, x0, vae_chunk)
            pulled = (flat * grad).sum()
            loss = loss + (pulled - pulled.detach())  # the same value; gradient w.r.t. the renders = grad
        return SDSOutput(loss=loss, target=x0, latents=z, timestep=t)

    def _chunked_gradient(self, flat: Tensor, posterior_noise: Tensor, x0: Tensor, chunk: int) -> Tensor:
        """∂L/∂renders (N, 3, H, W) of L = ½‖E(renders) − x̂0‖²/N, re-encoding `chunk` renders at a time."""
        grad = torch.empty_like(flat)
        with torch.enable_grad():
            for i in range(0, flat.shape[0], chunk):
                leaf = flat[i : i + chunk].detach().requires_grad_(True)
                z = self.encode_with_noise(leaf, posterior_noise[i : i + chunk])
                part = 0.5 * F.mse_loss(z, x0[i : i + chunk], reduction="sum") / flat.shape[0]
                (grad[i : i + chunk],) = torch.autograd.grad(part, leaf)
        return grad
