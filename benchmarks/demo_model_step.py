"""Time one training step of the demo 4DM (VAE phase and UNet phase) at several batch sizes, on synthetic data.

    python benchmarks/demo_model_step.py --config configs/demo/train_fourdm.yaml --batches 16 32 64 \
        --json out/demo_model_step.json [--profile 32]

The same model and the same step functions as `python -m stages.mvgen.training` with the demo config (random
weights and images: timing does not depend on the values): a VAE step on `vae_phase.batch_size` images and a UNet
step (eq. 7 forward, backward, clip, AdamW, EMA) on B windows of 8 frames × 5 slots. Prints a table and writes JSON
with the device and versions; `--profile B` adds torch.profiler's top CUDA kernels of one UNet step at batch B.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stages.common.config import load_config
from stages.mvgen.training.bank import ClipBank
from stages.mvgen.training.batches import Caches, MemoryBatches
from stages.mvgen.training.build import build_pipeline
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.vae_phase import vae_loss


def synthetic_bank(cfg: TrainConfig, clips: int = 4, views: int = 16, frames: int = 24) -> ClipBank:
    n = clips * views * frames
    rng = np.random.default_rng(0)
    return ClipBank(
        rgb=rng.integers(0, 256, (n, cfg.data.size_px, cfg.data.size_px, 3), dtype=np.uint8),
        alpha=np.full((n, cfg.data.size_px, cfg.data.size_px), 255, np.uint8),
        names=[f"clip{c}" for c in range(clips)],
        captions=["a thing"] * clips,
        num_views=[views] * clips,
        num_frames=[frames] * clips,
        elevations=[0.0] * clips,
        offsets=[c * views * frames for c in range(clips)],
        subjects=[0] * clips,
        subject_captions=["a thing"],
    )


def timed(fn, repeats: int, device: torch.device) -> float:
    """Mean seconds per call after two warm-up calls."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("configs/demo/train_fourdm.yaml"))
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--profile", type=int, default=0, help="batch size to profile (0: none)")
    p.add_argument("--compile", action="store_true", help="time the UNet step through torch.compile")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    cfg = load_config(TrainConfig, a.config)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"focus_clip": "", "focus_fraction": 0.0})})
    model = cfg.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipeline(cfg, Path(tmp)).to(device)
    bank = synthetic_bank(cfg)
    rows: dict[str, float] = {}

    # VAE step.
    vae = pipe.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    rgb = torch.from_numpy(bank.rgb).to(device)
    autocast = torch.bfloat16 if cfg.optim.mixed_precision == "bf16" and device.type == "cuda" else None

    def vae_step() -> None:
        idx = torch.randint(rgb.shape[0], (cfg.vae_phase.batch_size,), device=device)
        x = rgb[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss, _ = vae_loss(
                vae, x, torch.ones_like(x[:, :1]), cfg.vae_phase, torch.Generator(device).manual_seed(0)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows[f"vae_step_b{cfg.vae_phase.batch_size}_s"] = timed(vae_step, a.repeats, device)
    vae.eval().requires_grad_(False)

    # UNet step on cached-latent stand-ins (the trainer's own loss function).
    h = cfg.data.size_px // 2 ** (len(model.vae.block_out_channels) - 1)
    n = len(bank.rgb)
    caches = Caches(
        mean=torch.randn(n, model.vae.latent_channels, h, h, device=device),
        std=torch.full((n, model.vae.latent_channels, h, h), 0.1, device=device),
        tokens=torch.randn(
            n, (cfg.data.size_px // model.image_patch_px) ** 2 + 1, model.image_encoder.hidden_size, device=device
        ),
        text=torch.randn(2, 77, model.text_encoder.hidden_size, device=device),
    )
    unet = pipe.unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ema = {k: p.detach().clone() for k, p in unet.named_parameters()}
    params = dict(unet.named_parameters())
    denoiser = torch.compile(unet) if a.compile else unet
    for batch in a.batches:
        sched = cfg.schedule.model_copy(update={"batch_size": batch, "micro_batch_size": batch})
        batches = MemoryBatches(pipe, bank, caches, cfg.model_copy(update={"schedule": sched}))
        counter = iter(range(10**9))
        if a.compile:
            t0 = time.perf_counter()
            batches.loss(0, 0, denoiser).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rows[f"compile_b{batch}_s"] = time.perf_counter() - t0

        def unet_step(batches=batches, counter=counter) -> None:
            loss = batches.loss(next(counter), 0, denoiser)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            torch._foreach_lerp_(list(ema.values()), [params[k].detach() for k in ema], 0.001)

        rows[f"unet_step_b{batch}_s"] = timed(unet_step, a.repeats, device)
        if device.type == "cuda":
            rows[f"unet_step_b{batch}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if batch == a.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts) as prof:
                unet_step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=20))
    info = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "config": str(a.config),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        **{k: round(v, 5) for k, v in rows.items()},
    }
    print(f"{'measure':<28} value")
    for k, v in rows.items():
        print(f"{k:<28} {v:.4f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
