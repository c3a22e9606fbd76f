"""The demo trainer's two phases: the VAE (weighted L1 + KL, then its scaling factor), and the UNet on eq. 7 over
windows drawn from the in-memory clip bank, from cached posteriors and encoder tokens."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from stages.mvgen.pipeline_fourdm import FourDMPipeline
from stages.mvgen.training.demo_checkpoint import TrainState
from stages.mvgen.training.demo_config import DemoModelConfig
from stages.mvgen.training.demo_data import (
    ClipBank,
    sample_windows,
)
from stages.mvgen.training.objective import denoising_loss, dropout_mask, step_generator

VAE_WARMUP = 100

log = logging.getLogger(__name__)


class TrainLog:
    """Averages losses over `every` steps; appends JSON lines to train_log.jsonl and logs to MLflow. `start` is the
    `time.monotonic()` that elapsed times count from (the run's process start)."""

    def __init__(self, path: Path, every: int, tracker, start: float) -> None:  # noqa: ANN001
        self.path, self.every, self.tracker, self.start = path, every, tracker, start
        self.losses: list[Tensor | float] = []
        self.parts: dict[str, list[float]] = {}
        self.last: dict[str, float] = {}

    def add(self, phase: str, step: int, loss: Tensor | float, parts: dict, lr: float) -> None:
        self.losses.append(loss.detach() if isinstance(loss, Tensor) else loss)
        for k, v in parts.items():
            self.parts.setdefault(k, []).append(v.detach() if isinstance(v, Tensor) else v)
        if step % self.every:
            return
        mean = lambda xs: float(torch.stack([torch.as_tensor(x).float().cpu() for x in xs]).mean())  # noqa: E731
        row = {"phase": phase, "step": step, "loss": mean(self.losses), "lr": lr}
        row.update({k: mean(v) for k, v in self.parts.items()})
        row["elapsed_s"] = round(time.monotonic() - self.start, 2)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.tracker.log_metrics({f"{phase}/{k}": v for k, v in row.items() if k not in ("phase", "step")}, step=step)
        self.last[phase] = row["loss"]
        log.info("%s step %d: loss %.4f (lr %.2e, %.0f s)", phase, step, row["loss"], lr, row["elapsed_s"])
        self.losses, self.parts = [], {}


# -- phase 1: the VAE ---------------------------------------------------------------------------------------------


def images_at(bank_rgb: Tensor, idx: Tensor) -> Tensor:
    """uint8 (M, H, W, 3) on device → float (N, 3, H, W) in [−1, 1]."""
    return bank_rgb[idx].permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_loss(vae: nn.Module, x: Tensor, object_mask: Tensor, cfg: DemoModelConfig, generator: torch.Generator):
    """Weighted L1 reconstruction (1 + w on object pixels) + kl_weight · KL; returns (loss, parts)."""
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, device=generator.device).to(x)
    recon = vae.decode(posterior.mean + posterior.std * noise).sample
    weight = 1.0 + cfg.vae_object_weight * object_mask
    l1 = (weight * (recon.float() - x).abs()).mean()
    kl = posterior.kl().mean()
    return l1 + cfg.vae_kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


def train_vae(
    pipe: FourDMPipeline,
    rgb: Tensor,
    alpha: Tensor,
    cfg: DemoModelConfig,
    state: TrainState,
    deadline: float,
    logger: TrainLog,
) -> None:
    """Phase 1 up to `cfg.vae_steps` or the deadline (cosine learning rate after a 100-step warm-up)."""
    vae, device = pipe.vae, pipe.device
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    autocast = _autocast(cfg, device)
    t0 = time.monotonic()
    for step in range(state.vae_step, cfg.vae_steps):
        if time.monotonic() > deadline:
            break
        gen = step_generator(cfg.seed + 1, step)
        idx = torch.randint(rgb.shape[0], (cfg.vae_batch_size,), generator=gen).to(device)
        x = images_at(rgb, idx)
        mask = (alpha[idx] > 0).float()[:, None]
        warm = min(1.0, (step + 1) / VAE_WARMUP)
        cosine = 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.vae_steps)))
        for group in optimizer.param_groups:
            group["lr"] = cfg.vae_learning_rate * warm * (0.1 + 0.9 * cosine)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss, parts = vae_loss(vae, x, mask, cfg, _device_generator(device, cfg.seed + 1, step))
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
    """1 / std of posterior samples over all images and latent elements (SD's recipe for 0.18215)."""
    gen = torch.Generator(device=mean.device).manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=gen, device=mean.device)
    return float(1.0 / z.float().std())


# -- phase 2: the UNet --------------------------------------------------------------------------------------------


@dataclass
class Caches:
    """Everything phase 2 reads per step, on the device: scaled posterior mean/std per image, CLIP-vision tokens per
    image, text tokens per subject caption plus the empty caption (last row)."""

    mean: Tensor
    std: Tensor
    tokens: Tensor
    text: Tensor


@torch.no_grad()
def build_caches(
    pipe: FourDMPipeline, bank: ClipBank, rgb: Tensor, batch: int = 512, index: Tensor | None = None
) -> Caches:
    """Caches of every image of the bank, or of the images `index` (1-D, rows in that order) only."""
    images = bank.rgb
    if index is not None:
        rgb, images = rgb[index.to(rgb.device)].to(pipe.device), bank.rgb[index.cpu().numpy()]
    mean, std = latent_statistics(pipe, rgb)
    scale = pipe.vae.config.scaling_factor
    tokens = torch.cat(
        [pipe.encode_images(images[s : s + batch]).float() for s in range(0, len(images), batch)]
    )  # (M, T, E)
    text = pipe.encode_text([*bank.subject_captions, ""]).float()  # (S + 1, 77, D)
    return Caches(mean=mean * scale, std=std * scale, tokens=tokens, text=text)


def unet_step_loss(
    pipe: FourDMPipeline,
    bank: ClipBank,
    caches: Caches,
    cfg: DemoModelConfig,
    step: int,
    denoiser: nn.Module | None = None,
) -> Tensor:
    """Eq. 7 on one batch of windows drawn for `step` (a pure function of seed and step); `denoiser` is the UNet
    to call (e.g. a `torch.compile` of `pipe.unet`, sharing its parameters)."""
    device = pipe.device
    gen = step_generator(cfg.seed, step)
    focus = bank.names.index(cfg.focus_clip) if cfg.focus_clip else None
    w = sample_windows(
        bank,
        cfg.batch_size,
        cfg.num_frames,
        cfg.max_frame_stride,
        gen,
        cfg.time_reversal,
        focus,
        cfg.focus_fraction,
        cfg.front_view_only,
        cfg.front_view_any_base,
    )
    keep = (~dropout_mask(cfg.batch_size, cfg.condition_dropout, gen)).to(device)
    dev_gen = _device_generator(device, cfg.seed, step)
    views, cond = w.views.to(device), w.condition.to(device)

    def sample(idx: Tensor) -> Tensor:
        noise = torch.randn((*idx.shape, *caches.mean.shape[1:]), generator=dev_gen, device=device)
        return caches.mean[idx] + caches.std[idx] * noise

    x0 = sample(views)  # (B, F, 4, C, h, w)
    ref = sample(cond) * keep[:, None, None, None, None]  # (B, F, C, h, w)
    tokens = caches.tokens[cond] * keep[:, None, None, None]  # (B, F, T, E)
    empty = caches.text.shape[0] - 1
    text = caches.text[torch.where(keep, w.captions.to(device), empty)]  # (B, 77, D)
    return denoising_loss(
        denoiser or pipe.unet,
        pipe.scheduler,
        x0,
        ref,
        tokens,
        text,
        w.cameras.to(device),
        dev_gen,
        _autocast(cfg, device),
    )


def train_unet(
    pipe: FourDMPipeline,
    bank: ClipBank,
    caches: Caches,
    cfg: DemoModelConfig,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, Tensor],
    warm_from: int,
    deadline: float,
    logger: TrainLog,
    on_checkpoint,
) -> None:
    """Phase 2 up to `cfg.unet_steps` or the deadline; learning rate warms up from step `warm_from`."""
    unet = pipe.unet
    unet.train().requires_grad_(True)
    params = dict(unet.named_parameters())
    denoiser = torch.compile(unet) if cfg.compile_unet else unet
    t0 = time.monotonic()
    for step in range(state.unet_step, cfg.unet_steps):
        if time.monotonic() > deadline:
            break
        lr = cfg.learning_rate * min(1.0, (step - warm_from + 1) / max(1, cfg.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = unet_step_loss(pipe, bank, caches, cfg, step, denoiser)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        optimizer.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            keys = list(ema)
            torch._foreach_lerp_([ema[k] for k in keys], [params[k].detach() for k in keys], 1.0 - decay)
        state.unet_step = step + 1
        state.windows += cfg.batch_size
        logger.add("unet", state.unet_step, loss, {"grad_norm": grad_norm}, lr)
        if state.unet_step % cfg.checkpoint_every == 0:
            state.seconds["unet"] = state.seconds.get("unet", 0.0) + time.monotonic() - t0
            t0 = time.monotonic()
            on_checkpoint()
    state.seconds["unet"] = state.seconds.get("unet", 0.0) + time.monotonic() - t0
    unet.eval().requires_grad_(False)


def _autocast(cfg: DemoModelConfig, device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if cfg.mixed_precision == "bf16" and device.type == "cuda" else None


def _device_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    """Noise and timesteps of one step on the device: a pure function of (seed, step) (int tuples hash stably)."""
    return torch.Generator(device).manual_seed(hash((seed, step, 1)) % (2**63))
