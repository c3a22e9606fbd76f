"""What the demo trainer writes for people: sample grids against the ground truth (with their PSNR), VAE
reconstructions and report.md."""

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
from stages.mvgen.training.demo_checkpoint import LOG_FILE
from stages.mvgen.training.demo_config import DemoModelConfig
from stages.mvgen.training.demo_data import (
    ClipBank,
    clip_stride,
    front_view,
)
from stages.mvgen.training.demo_phases import images_at

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


def write_samples(pipe: FourDMPipeline, bank: ClipBank, cfg: DemoModelConfig, directory: Path) -> dict:
    """Grids (rows: input; per view ground truth then one row per CFG scale) and PSNR vs the ground truth."""
    directory.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, dict[str, float]] = {}
    for c, view, frames in eval_windows(bank, cfg.num_frames, cfg.max_frame_stride):
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
                generator=torch.Generator(pipe.device).manual_seed(cfg.seed),
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


def write_report(output_dir: Path, summary: dict) -> None:
    """`report.md`: the numbers of the model card (data, sizes, steps, loss curve, sample PSNRs) from the run."""
    rows = (
        [json.loads(line) for line in (output_dir / LOG_FILE).read_text().splitlines()]
        if (output_dir / LOG_FILE).is_file()
        else []
    )
    lines = [
        "# Demo 4DM training run",
        "",
        f"Device {summary['device']}, torch {summary['torch']}; this run {summary['run_wall_s']} s wall.",
        f"Data: {len(summary['data']['clips'])} clips of {len(summary['data']['subjects'])} subjects "
        f"({', '.join(summary['data']['subjects'])}), {summary['data']['images']} images at "
        f"{summary['data']['size_px']}².",
        "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in summary["parameters"].items()) + ".",
        f"VAE: {summary['vae']['steps']} steps, reconstruction PSNR {summary['vae']['recon_psnr_db']:.2f} dB "
        f"(16 images, `samples/vae_reconstructions.png`), scaling factor {summary['vae']['scaling_factor']:.5f}.",
        f"UNet: {summary['unet']['steps']} steps in all ({summary['unet']['steps_this_run']} in this run at "
        f"{summary['unet']['steps_per_s_this_run']} steps/s), {summary['unet']['windows_seen']:,} windows of 8 "
        "frames × 5 slots.",
        f"Seconds: {summary['seconds']}.",
        f"Recipe of this run: {summary.get('recipe', 'not recorded')}.",
        "",
        "## Loss (mean over each logging interval)",
        "",
        "| phase | step | loss |",
        "|---|---|---|",
    ]
    for phase in ("vae", "unet"):
        sel = [r for r in rows if r["phase"] == phase]
        picks = (
            sorted({0, len(sel) // 10, len(sel) // 4, len(sel) // 2, 3 * len(sel) // 4, len(sel) - 1}) if sel else []
        )
        lines += [f"| {phase} | {sel[i]['step']} | {sel[i]['loss']:.4f} |" for i in picks if 0 <= i < len(sel)]
    lines += ["", "## Samples (PSNR in dB against the ground-truth views; grids in samples/)", ""]
    scales = sorted({k for m in summary["samples"].values() for k in m})
    lines += ["| clip | " + " | ".join(scales) + " |", "|---" * (len(scales) + 1) + "|"]
    for clip, m in summary["samples"].items():
        lines.append(f"| {clip} | " + " | ".join(f"{m[k]:.2f}" for k in scales) + " |")
    if summary.get("camera_check"):
        recipe = summary.get("recipe", {})
        front = recipe.get("front_view_only", False)
        any_base = front and recipe.get("front_view_any_base", False)
        flags = (" --front-view" if front else "") + (" --any-base" if any_base else "")
        kind = "v" if recipe.get("prediction_type") == "v_prediction" else "ε"
        lines += [
            "",
            f"## Camera check (`python -m stages.mvgen.training.camera_check{flags}`: "
            f"{kind}-MSE of 8 training windows{' conditioned on the front view' if front else ''} with",
            "the true cameras vs each view given the next view's camera; ~0 % means the camera input is unused)",
            "",
            "| t | true | rotated | relative gap | x̂0 error, own view | x̂0 error, next view |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['t']} | {r['mse_true']:.5f} | {r['mse_rotated']:.5f} | {r['relative_gap']:+.2%} | "
            f"{r['x0_own']:.4f} | {r['x0_other']:.4f} |"
            for r in summary["camera_check"]
        ]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
