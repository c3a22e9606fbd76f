"""One micro-batch's loss (eq. 7) for the two data paths (`data.in_memory`); both draw their windows with
`windows.draw_window` from `step_generator(seed, step, index)`, index = the micro-batch's place in the global batch.

- From disk (`DiskBatches`): read the window's images, encode them with the frozen VAE (posterior samples) and CLIP
  encoders, all draws from that one CPU generator (`objective.training_loss`).
- From memory (`MemoryBatches`): gather cached posteriors and tokens (`build_caches`); windows and dropout from the
  CPU generator of index 2·i, posterior noise, ε and t from the device generator of index 2·i + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stages.mvgen.pipeline_fourdm import FourDMPipeline
from stages.mvgen.training.bank import ClipBank, sample_windows
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.dataset import ClipSource, clip_table, read_window
from stages.mvgen.training.objective import (
    autocast_dtype,
    denoising_loss,
    device_generator,
    dropout_mask,
    step_generator,
    training_loss,
)
from stages.mvgen.training.vae_phase import latent_statistics
from stages.mvgen.training.windows import WindowSpec, draw_window

__all__ = ["Caches", "DiskBatches", "MemoryBatches", "build_caches"]


class DiskBatches:
    """Micro-batches read from render artifacts on disk."""

    def __init__(self, pipe: FourDMPipeline, sources: list[ClipSource], config: TrainConfig) -> None:
        self.pipe, self.sources, self.config = pipe, sources, config
        self.table = clip_table(sources)
        self.spec = WindowSpec.from_config(config.data, self.table.names)

    def loss(self, step: int, index: int, denoiser: nn.Module | None = None) -> Tensor:
        cfg = self.config
        gen = step_generator(cfg.seed, step, index)
        samples = [
            read_window(self.sources, draw_window(self.table, self.spec, gen), cfg.data.size_px)
            for _ in range(cfg.schedule.micro_batch_size)
        ]
        autocast = autocast_dtype(cfg.optim.mixed_precision, self.pipe.device)
        dropout, drop = cfg.conditioning.condition_dropout, cfg.conditioning.drop_with_reference
        return training_loss(self.pipe, samples, gen, dropout, autocast, denoiser, drop)


@dataclass
class Caches:
    """Everything a step reads, on the device: scaled posterior mean/std per image, CLIP-vision tokens per image,
    text tokens per subject caption plus the empty caption (last row)."""

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


class MemoryBatches:
    """Micro-batches gathered from a `ClipBank`'s caches."""

    def __init__(self, pipe: FourDMPipeline, bank: ClipBank, caches: Caches, config: TrainConfig) -> None:
        self.pipe, self.bank, self.caches, self.config = pipe, bank, caches, config
        self.spec = WindowSpec.from_config(config.data, bank.names)

    def loss(self, step: int, index: int, denoiser: nn.Module | None = None) -> Tensor:
        cfg, caches, device = self.config, self.caches, self.pipe.device
        batch = cfg.schedule.micro_batch_size
        gen = step_generator(cfg.seed, step, 2 * index)
        w = sample_windows(self.bank, batch, self.spec, gen)
        keep = (~dropout_mask(batch, cfg.conditioning.condition_dropout, gen)).to(device)
        dev_gen = device_generator(device, cfg.seed, step, 2 * index + 1)
        views, cond = w.views.to(device), w.condition.to(device)

        def sample(idx: Tensor) -> Tensor:
            noise = torch.randn((*idx.shape, *caches.mean.shape[1:]), generator=dev_gen, device=device)
            return caches.mean[idx] + caches.std[idx] * noise

        x0 = sample(views)  # (B, F, 4, C, h, w)
        ref = sample(cond) * keep[:, None, None, None, None]  # (B, F, C, h, w)
        tokens = caches.tokens[cond] * keep[:, None, None, None]  # (B, F, T, E)
        captions, cameras = w.captions.to(device), w.cameras.to(device)
        if cfg.conditioning.drop_with_reference == "caption":
            captions = torch.where(keep, captions, caches.text.shape[0] - 1)  # the last row: the empty caption
        else:
            cameras = cameras * keep[:, None, None]
        return denoising_loss(
            denoiser or self.pipe.unet,
            self.pipe.scheduler,
            x0,
            ref,
            tokens,
            caches.text[captions],  # (B, 77, D)
            cameras,
            dev_gen,
            autocast_dtype(cfg.optim.mixed_precision, device),
        )
