"""Sample grids of the current weights: one fixed window every `schedule.sample_every` steps (`write_sample_grid`),
and at the end (`schedule.final_report`) one window per subject against the ground truth with its PSNR
(`write_samples`) and the VAE's reconstructions (`write_vae_samples`). No generator of the training run is touched,
so sampling never changes what a run trains on."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stages.common.image_io import write_rgba
from stages.mvgen.pipeline_fourdm import FourDMPipeline
from stages.mvgen.training.bank import ClipBank
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.dataset import ClipSource, sample_clip
from stages.mvgen.training.vae_phase import images_at
from stages.mvgen.training.windows import clip_stride, front_view

__all__ = ["eval_windows", "psnr", "write_sample_grid", "write_samples", "write_vae_samples"]

log = logging.getLogger(__name__)


def eval_windows(bank: ClipBank, num_frames: int, max_stride: int) -> list[tuple[int, int, list[int]]]:
    """One sample window per subject: its longest clip (name order on ties), the view nearest azimuth 0 as
    the conditioning view (the demo input's), frames from 0 at the clip's stride: (clip, view, frames)."""
    out = []
    for k in range(len(bank.subject_captions)):
        members = [c for c in range(len(bank.names)) if bank.subjects[c] == k]
        clips = sorted((-bank.num_frames[c], bank.names[c], c) for c in members)
        c = clips[0][2]
        nv = bank.num_views[c]
        view = front_view(nv)
        stride = clip_stride(bank.num_frames[c], num_frames, max_stride)
        out.append((c, view, [i * stride for i in range(num_frames)]))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of float images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10.0 * math.log10(1.0 / mse)


def write_samples(pipe: FourDMPipeline, bank: ClipBank, config: TrainConfig, directory: Path) -> dict:
    """Grids (rows: input; per view ground truth then one row per CFG scale) and PSNR vs the ground truth."""
    directory.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, dict[str, float]] = {}
    cfg = config.schedule
    for c, view, frames in eval_windows(bank, config.data.num_frames, config.data.frame_stride):
        nv = bank.num_views[c]
        cond = bank.rgb[[bank.index(c, view, f) for f in frames]]  # (F, H, W, 3)
        truth = (
            np.stack(
                [bank.rgb[[bank.index(c, (view + k * nv // 4) % nv, f) for f in frames]] for k in range(4)]
            ).astype(np.float32)
            / 255.0
        )  # (4, F, H, W, 3)
        rows = [cond.astype(np.float32) / 255.0]
        samples = {}
        for scale in cfg.sample_guidance_scales:
            out = pipe(
                cond,
                bank.captions[c],
                negative_prompt="",
                elevation_deg=bank.elevations[c],
                num_inference_steps=cfg.sample_steps,
                guidance_scale=scale,
                generator=torch.Generator(pipe.device).manual_seed(config.seed),
            )
            samples[scale] = out.images
            metrics.setdefault(bank.names[c], {})[f"psnr_cfg{scale:g}"] = psnr(out.images, truth)
        for k in range(4):
            rows.append(truth[k])
            rows += [samples[s][k] for s in cfg.sample_guidance_scales]
        grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
        grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
        write_rgba(directory / f"{bank.names[c]}.png", np.dstack([grid, np.full(grid.shape[:2], 255, np.uint8)]))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


@torch.no_grad()
def write_vae_samples(pipe: FourDMPipeline, rgb: Tensor, directory: Path, count: int = 16) -> float:
    """Originals over reconstructions (posterior means) of `count` evenly spaced images; returns their PSNR."""
    directory.mkdir(parents=True, exist_ok=True)
    idx = torch.linspace(0, rgb.shape[0] - 1, count, device=rgb.device).round().long()
    x = images_at(rgb, idx)
    recon = pipe.vae.decode(pipe.vae.encode(x.to(pipe.vae.dtype)).latent_dist.mean).sample.float()
    a, b = (((t.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy() for t in (x, recon))
    grid = np.concatenate([np.concatenate(list(a), axis=1), np.concatenate(list(b), axis=1)], axis=0)
    grid = (grid * 255).round().astype(np.uint8)
    write_rgba(directory / "vae_reconstructions.png", np.dstack([grid, np.full(grid.shape[:2], 255, np.uint8)]))
    return psnr(b, a)


@torch.no_grad()
def write_sample_grid(pipe: FourDMPipeline, sources: list[ClipSource], config: TrainConfig, path: Path) -> Path:
    """A sample grid of the current weights: the first row is the conditioning video, then per view (0/90/180/270°
    from it) the ground truth and one sample per CFG scale. The window is the same at every call (drawn from
    `config.seed`, at the exact `data.frame_stride`)."""
    data, sched = config.data, config.schedule
    gen = torch.Generator().manual_seed(config.seed)
    sample = sample_clip(sources, data.num_frames, data.frame_stride, data.size_px, gen, aligned=True)
    training = pipe.unet.training
    pipe.unet.eval()
    outs = [
        pipe(
            sample.condition,
            sample.caption,
            negative_prompt="",
            num_inference_steps=sched.sample_steps,
            guidance_scale=scale,
            generator=torch.Generator(pipe.device).manual_seed(config.seed),
        ).images  # (4, F, H, W, 3) in [0, 1]
        for scale in sched.sample_guidance_scales
    ]
    pipe.unet.train(training)
    rows = [sample.condition]
    for k in range(4):
        rows.append(sample.views[k])
        rows += [(np.clip(out[k], 0.0, 1.0) * 255.0).round().astype(np.uint8) for out in outs]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    write_rgba(path, np.dstack([grid, np.full(grid.shape[:2], 255, np.uint8)]))
    return path
