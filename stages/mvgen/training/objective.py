"""The 4DM training objective (spec §2.6, eq. 7) and the camera check's measure built on it.

Eq. 7: noise 4 orthogonal views × F frames of a clip at one timestep, keep the conditioning video's clean latents in
the reference slot, and regress the UNet's output on the noise ε (the paper) or on v (`prediction_type:
v_prediction`, the demo model's), with condition dropout for classifier-free guidance. Every draw comes from a
generator that is a pure function of (seed, step, micro-batch), so runs resume and scale over GPUs exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import Tensor

from stages.mvgen.pipeline_fourdm import FourDMPipeline, predicted_x0, prediction_type
from stages.mvgen.training.dataset import TrainSample

__all__ = [
    "SLOTS",
    "VIEWS",
    "autocast_dtype",
    "camera_gap",
    "device_generator",
    "denoising_loss",
    "dropout_mask",
    "output_and_target",
    "step_generator",
    "training_loss",
]

VIEWS, SLOTS = 4, 5  # generated views; + the reference slot


def step_generator(seed: int, step: int, index: int = 0) -> torch.Generator:
    """The generator of micro-batch `index` of optimiser step `step`: a pure function of (seed, step, index).

    `index` counts micro-batches over the whole global batch (rank · accumulation + micro), so a global batch
    draws the same clips, noise, timesteps and dropout on any number of GPUs.
    """
    return torch.Generator().manual_seed(hash((seed, step, index)) % (2**63))


def device_generator(device: torch.device, seed: int, step: int, index: int = 1) -> torch.Generator:
    """A generator on `device` that is a pure function of (seed, step, index) (int tuples hash stably): the noise
    and timesteps of the in-memory path, drawn where the latents are."""
    return torch.Generator(device).manual_seed(hash((seed, step, index)) % (2**63))


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA when `optim.mixed_precision` asks for it; None (fp32) otherwise."""
    return torch.bfloat16 if mixed_precision == "bf16" and device.type == "cuda" else None


def dropout_mask(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """(batch,) bool: True where the window trains unconditionally (`conditioning.condition_dropout`)."""
    return torch.rand(batch, generator=generator) < p


def training_loss(
    pipe: FourDMPipeline,
    samples: list[TrainSample],
    generator: torch.Generator,
    condition_dropout: float,
    autocast_dtype: torch.dtype | None = None,
    denoiser: torch.nn.Module | None = None,
    drop_with_reference: str = "cameras",
) -> Tensor:
    """Eq. 7 on a micro-batch read from disk: images encoded by the frozen VAE (posterior samples from
    `generator`) and CLIP encoders, then `denoising_loss`.

    `denoiser` is the UNet to call (a DistributedDataParallel wrapper of `pipe.unet` when training on several GPUs).
    An unconditional window (probability `condition_dropout`) has its reference video zeroed and, per
    `drop_with_reference`, its cameras zeroed or its caption emptied (`ConditioningConfig`).
    """
    device = pipe.device
    batch, frames = len(samples), samples[0].views.shape[1]
    # 1. Frozen encoders: latents of the views and of the conditioning frames, CLIP tokens, text.
    views = np.concatenate([s.views.reshape(-1, *s.views.shape[2:]) for s in samples])  # (B·4·F, H, W, 3)
    cond = np.concatenate([s.condition for s in samples])  # (B·F, H, W, 3)
    x0 = pipe.encode_latents(views, generator).float()  # (B·4·F, C, h, w)
    x0 = x0.reshape(batch, VIEWS, frames, *x0.shape[1:]).transpose(1, 2)  # (B, F, 4, C, h, w)
    ref = pipe.encode_latents(cond, generator).float().reshape(batch, frames, *x0.shape[3:])  # (B, F, C, h, w)
    tokens = pipe.encode_images(cond).float().reshape(batch, frames, -1, pipe.unet.config.ip_embedding_dim)
    cameras = torch.stack([torch.from_numpy(s.cameras) for s in samples]).to(device)  # (B, 5, 16)
    # 2. Condition dropout (eq. 7): reference video (pixel latents and CLIP tokens) zeroed, and cameras or caption.
    dropped = dropout_mask(batch, condition_dropout, generator)
    keep = (~dropped).to(device).float()
    ref, tokens = ref * keep[:, None, None, None, None], tokens * keep[:, None, None, None]
    if drop_with_reference == "cameras":
        cameras = cameras * keep[:, None, None]
        captions = [s.caption for s in samples]
    else:
        captions = ["" if d else s.caption for s, d in zip(samples, dropped.tolist(), strict=True)]
    text = pipe.encode_text(captions).float()  # (B, 77, D)
    return denoising_loss(
        denoiser or pipe.unet, pipe.scheduler, x0, ref, tokens, text, cameras, generator, autocast_dtype
    )


def denoising_loss(
    denoiser: torch.nn.Module,
    scheduler: DDIMScheduler,
    x0: Tensor,
    ref: Tensor,
    tokens: Tensor,
    text: Tensor,
    cameras: Tensor,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Eq. 7 on encoded clips (condition dropout already applied by the caller).

    Noise and one timestep per clip are drawn from `generator` (on its device), the reference slot holds the
    clean reference latent, and the loss is the MSE over the 4 generated views between the UNet's output and its
    target: the noise ε (the paper's ε-prediction), or v = √ᾱ·ε − √(1−ᾱ)·x0 for a scheduler configured with
    `prediction_type="v_prediction"` (an option of the demo model, used with a zero-terminal-SNR schedule).

    Args:
        denoiser: the 4DM UNet (or a DistributedDataParallel wrapper of it).
        scheduler: gives `num_train_timesteps` and `add_noise`.
        x0: (B, F, 4, C, h, w) clean latents of the 4 generated views.
        ref: (B, F, C, h, w) clean latents of the conditioning video (zeros where dropped).
        tokens: (B, F, T, E) CLIP-vision tokens of the conditioning frames (zeros where dropped).
        text: (B, 77, D) text tokens.
        cameras: (B, 5, 16) camera vectors of the 4 views and the reference slot.
        generator: noise and timesteps; on the latents' device or the CPU.
        autocast_dtype: autocast the UNet forward to this dtype (None: no autocast).

    Returns:
        scalar loss (float32).
    """
    device = x0.device
    batch, frames = x0.shape[:2]
    latent = x0.shape[3:]
    noise = torch.randn((batch, frames, SLOTS, *latent), generator=generator, device=generator.device).to(device)
    t = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=generator.device
    ).to(device)
    out, target, _ = output_and_target(denoiser, scheduler, x0, ref, tokens, text, cameras, noise, t, autocast_dtype)
    return F.mse_loss(out[:, :, :VIEWS], target[:, :, :VIEWS])


def output_and_target(
    denoiser: torch.nn.Module,
    scheduler: DDIMScheduler,
    x0: Tensor,
    ref: Tensor,
    tokens: Tensor,
    text: Tensor,
    cameras: Tensor,
    noise: Tensor,
    t: Tensor,
    autocast_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The UNet's output for clips noised with `noise` (B, F, 5, C, h, w) at timesteps t (B,), its training target
    (the scheduler's prediction type: ε or v) and the noisy latents it was given, all (B, F, 5, C, h, w)."""
    prediction = prediction_type(scheduler)
    device = x0.device
    batch, frames = x0.shape[:2]
    latent = x0.shape[3:]
    # The reference slot is overwritten with the clean reference latent inside the UNet.
    x0_slots = torch.cat([x0, ref[:, :, None]], dim=2)  # (B, F, 5, C, h, w)
    t_rows = t.repeat_interleave(frames * SLOTS)
    noisy = scheduler.add_noise(x0_slots.reshape(-1, *latent), noise.reshape(-1, *latent), t_rows)
    rows = batch * frames * SLOTS
    per_row = lambda x: x.repeat_interleave(frames * SLOTS, dim=0)  # noqa: E731  (B, ...) → (B·F·5, ...)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        eps = denoiser(
            noisy,
            t_rows,
            per_row(text),
            cameras.repeat_interleave(frames, dim=0).reshape(rows, -1),
            tokens.repeat_interleave(SLOTS, dim=1).reshape(rows, *tokens.shape[2:]),
            ref.reshape(batch * frames, *latent),
            frames,
            SLOTS,
        )
    eps = eps.float().reshape(batch, frames, SLOTS, *latent)
    noisy = noisy.reshape(batch, frames, SLOTS, *latent)
    if prediction == "epsilon":
        return eps, noise, noisy
    velocity = scheduler.get_velocity(x0_slots.reshape(-1, *latent), noise.reshape(-1, *latent), t_rows)
    return eps, velocity.float().reshape(batch, frames, SLOTS, *latent), noisy


@torch.no_grad()
def camera_gap(
    denoiser: torch.nn.Module,
    scheduler: DDIMScheduler,
    x0: Tensor,
    ref: Tensor,
    tokens: Tensor,
    text: Tensor,
    cameras: Tensor,
    timesteps: list[int],
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
) -> dict[int, dict[str, float]]:
    """Does the UNet use its camera input? Per timestep t, same noise for every evaluation:

    - `mse_true`, `mse_rotated`: the loss (ε- or v-MSE, as trained) of the 4 views with the true cameras and with
      each view given the next view's camera (view k gets k+1's, the last gets the first's). A UNet that has learnt
      the camera conditioning does worse with the rotated cameras, mostly at high t; equal losses mean it ignores
      which camera a slot has.
    - `x0_own`, `x0_other`: mean squared error of the x̂0 it predicts (true cameras) against each view's own clean
      latent and against the next view's. `x0_own` well below `x0_other` at high t means the views can be told apart
      from their noisy latents alone, so training never needs the camera (the schedule's ᾱ at that t is too high).

    Arguments as in `denoising_loss` (conditioning as trained, no dropout).
    """
    batch, frames = x0.shape[:2]
    rotated = torch.cat([cameras[:, 1:VIEWS], cameras[:, :1], cameras[:, VIEWS:]], dim=1)
    out = {}
    for t in timesteps:
        noise = torch.randn((batch, frames, SLOTS, *x0.shape[3:]), generator=generator, device=generator.device)
        noise = noise.to(x0.device)
        tt = torch.full((batch,), int(t), dtype=torch.long, device=x0.device)
        row: dict[str, float] = {}
        for name, cams in (("true", cameras), ("rotated", rotated)):
            pred, target, noisy = output_and_target(
                denoiser, scheduler, x0, ref, tokens, text, cams, noise, tt, autocast_dtype
            )
            row[f"mse_{name}"] = float(F.mse_loss(pred[:, :, :VIEWS], target[:, :, :VIEWS]))
            if name == "true":
                alpha = scheduler.alphas_cumprod[int(t)]
                x0_hat = predicted_x0(scheduler.config.prediction_type, noisy, pred, alpha)[:, :, :VIEWS]
                row["x0_own"] = float(F.mse_loss(x0_hat, x0))
                row["x0_other"] = float(F.mse_loss(x0_hat, x0.roll(-1, dims=2)))
        out[int(t)] = row
    return out
