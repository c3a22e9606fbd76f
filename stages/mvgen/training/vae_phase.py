"""The VAE phase of a built model (`vae_phase.*`): weighted L1 + KL on every image held in memory, then the
scaling factor = 1 / std of the latents (SD's recipe for 0.18215)."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from stages.mvgen.pipeline_fourdm import FourDMPipeline
from stages.mvgen.training.checkpoint import TrainState
from stages.mvgen.training.config import TrainConfig, VAEPhaseConfig
from stages.mvgen.training.objective import autocast_dtype, device_generator, step_generator
from stages.mvgen.training.report import TrainLog

__all__ = ["fit_scaling_factor", "images_at", "latent_statistics", "train_vae", "vae_loss"]

VAE_WARMUP = 100


def images_at(bank_rgb: Tensor, idx: Tensor) -> Tensor:
    """uint8 (M, H, W, 3) on device → float (N, 3, H, W) in [−1, 1]."""
    return bank_rgb[idx].permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_loss(vae: nn.Module, x: Tensor, object_mask: Tensor, phase: VAEPhaseConfig, generator: torch.Generator):
    """Weighted L1 reconstruction (1 + w on object pixels) + kl_weight · KL; returns (loss, parts)."""
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, device=generator.device).to(x)
    recon = vae.decode(posterior.mean + posterior.std * noise).sample
    weight = 1.0 + phase.object_weight * object_mask
    l1 = (weight * (recon.float() - x).abs()).mean()
    kl = posterior.kl().mean()
    return l1 + phase.kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


def train_vae(
    pipe: FourDMPipeline,
    rgb: Tensor,
    alpha: Tensor,
    config: TrainConfig,
    state: TrainState,
    deadline: float,
    logger: TrainLog,
) -> None:
    """Up to `vae_phase.steps` or the deadline (cosine learning rate after a 100-step warm-up); images from
    `step_generator(seed + 1, step)`, posterior noise from its device twin."""
    phase, vae, device = config.vae_phase, pipe.vae, pipe.device
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=phase.learning_rate, weight_decay=0.0)
    autocast = autocast_dtype(config.optim.mixed_precision, device)
    t0 = time.monotonic()
    for step in range(state.vae_step, phase.steps):
        if time.monotonic() > deadline:
            break
        gen = step_generator(config.seed + 1, step)
        idx = torch.randint(rgb.shape[0], (phase.batch_size,), generator=gen).to(device)
        x = images_at(rgb, idx)
        mask = (alpha[idx] > 0).float()[:, None]
        warm = min(1.0, (step + 1) / VAE_WARMUP)
        cosine = 0.5 * (1 + math.cos(math.pi * step / max(1, phase.steps)))
        for group in optimizer.param_groups:
            group["lr"] = phase.learning_rate * warm * (0.1 + 0.9 * cosine)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss, parts = vae_loss(vae, x, mask, phase, device_generator(device, config.seed + 1, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        state.vae_step = step + 1
        logger.add("vae", state.vae_step, loss, parts, optimizer.param_groups[0]["lr"])
    state.seconds["vae"] = state.seconds.get("vae", 0.0) + time.monotonic() - t0
    vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_statistics(pipe: FourDMPipeline, rgb: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior mean and std (unscaled) of every image: two (M, C, h, w) float32 tensors on the device."""
    means, stds = [], []
    for start in range(0, rgb.shape[0], batch):
        idx = torch.arange(start, min(start + batch, rgb.shape[0]), device=rgb.device)
        posterior = pipe.vae.encode(images_at(rgb, idx).to(pipe.vae.dtype)).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def fit_scaling_factor(mean: Tensor, std: Tensor, seed: int) -> float:
    """1 / std of posterior samples over all images and latent elements."""
    gen = torch.Generator(device=mean.device).manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=gen, device=mean.device)
    return float(1.0 / z.float().std())
