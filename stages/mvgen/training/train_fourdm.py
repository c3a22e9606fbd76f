"""Train 4DM (spec §2.6–2.7, eq. 7): ε-prediction MSE on 4 orthogonal views × F frames, conditioned on a
monocular video, its cameras and a caption, with condition dropout for classifier-free guidance.

    python -m stages.mvgen.training --config configs/train_fourdm.yaml --data data/render \
        --weights weights/fourdm --output runs/fourdm-train

Paper mode trains only the motion modules (ImageDream frozen); scratch mode trains the whole UNet. The VAE and
the CLIP encoders are always frozen. Runs resume from their last atomic checkpoint; every step draws its clips,
noise, timesteps and dropout from a generator derived from (seed, step, rank), so a resumed run is identical to
an uninterrupted one. Data parallel over any number of GPUs with `torchrun --nproc_per_node N`: micro-batch k of
the global batch draws the same clips and noise whichever rank runs it, so N GPUs follow the loss curve of one GPU
with N-fold gradient accumulation (benchmarks/train_scaling.py measures both side by side).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file
from torch import Tensor

from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.common.image_io import write_rgba
from stages.common.logs import progress
from stages.common.tracking import Tracker, stage_run
from stages.mvgen.pipeline_fourdm import FourDMPipeline, load_fourdm, predicted_x0, prediction_type
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.dataset import TrainSample, find_clip_sources, sample_clip

__all__ = ["run", "training_loss", "denoising_loss", "camera_gap", "dropout_mask", "step_generator"]

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"
TRAIN_LOG = "train_log.jsonl"
SAMPLES = "samples"
SUMMARY = "summary.json"
VIEWS, SLOTS = 4, 5  # generated views; + the reference slot


def step_generator(seed: int, step: int, index: int = 0) -> torch.Generator:
    """The generator of micro-batch `index` of optimiser step `step`: a pure function of (seed, step, index).

    `index` counts micro-batches over the whole global batch (rank · accumulation + micro), so a global batch
    draws the same clips, noise, timesteps and dropout on any number of GPUs.
    """
    return torch.Generator().manual_seed(hash((seed, step, index)) % (2**63))


def dropout_mask(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """(batch,) bool: True where the clip trains unconditionally (reference video and cameras zeroed)."""
    return torch.rand(batch, generator=generator) < p


def training_loss(
    pipe: FourDMPipeline,
    samples: list[TrainSample],
    generator: torch.Generator,
    condition_dropout: float,
    autocast_dtype: torch.dtype | None = None,
    denoiser: torch.nn.Module | None = None,
) -> Tensor:
    """Eq. 7 on a micro-batch: MSE between the true and predicted noise of the 4 generated views.

    `denoiser` is the UNet to call (a DistributedDataParallel wrapper of `pipe.unet` when training on several GPUs).
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
    text = pipe.encode_text([s.caption for s in samples]).float()  # (B, 77, D)
    cameras = torch.stack([torch.from_numpy(s.cameras) for s in samples]).to(device)  # (B, 5, 16)
    # 2. Condition dropout (eq. 7): reference video (pixel latents and CLIP tokens) and cameras zeroed.
    keep = (~dropout_mask(batch, condition_dropout, generator)).to(device).float()
    ref, tokens = ref * keep[:, None, None, None, None], tokens * keep[:, None, None, None]
    cameras = cameras * keep[:, None, None]
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
    out, target, _ = _output_and_target(denoiser, scheduler, x0, ref, tokens, text, cameras, noise, t, autocast_dtype)
    return F.mse_loss(out[:, :, :VIEWS], target[:, :, :VIEWS])


def _output_and_target(
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
            pred, target, noisy = _output_and_target(
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


def _trainable(pipe: FourDMPipeline, mode: str) -> dict[str, torch.nn.Parameter]:
    unet = pipe.unet
    unet.requires_grad_(True)
    if mode == "paper":
        unet.freeze_spatial_layers()
    return {name: p for name, p in unet.named_parameters() if p.requires_grad}


def _save_checkpoint(output_dir: Path, step: int, params: dict, optimizer, ema: dict | None) -> None:
    """Write the checkpoint into a temp folder, then swap it in: a kill at any moment leaves a whole one."""
    tmp = output_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({k: v.cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    final, old = output_dir / CHECKPOINT, output_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(output_dir: Path, params: dict, optimizer, ema: dict | None) -> int:
    ckpt = output_dir / CHECKPOINT
    if not (ckpt / "state.json").is_file():
        return 0
    state = load_file(str(ckpt / "trainable.safetensors"))
    if set(state) != set(params):
        raise StageError(f"{ckpt} holds other trainable weights than this run (mode or model changed)")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    if ema is not None and (ckpt / "ema.safetensors").is_file():
        for k, v in load_file(str(ckpt / "ema.safetensors")).items():
            ema[k].copy_(v)
    step = int(json.loads((ckpt / "state.json").read_text())["step"])
    log.info("resumed from %s at step %d", ckpt, step)
    return step


def run(config: TrainConfig, *, data_dir: Path, weights_dir: Path, output_dir: Path) -> Path:
    """Train and export a FourDM weights folder to `<output>/weights`; resumes from `<output>/checkpoint`.

    Args:
        data_dir: a render artifact with `train/`, or a folder of them (render batch output).
        weights_dir: FourDM weights to start from (converted official weights, or a small model's).
        output_dir: run folder: checkpoint/, weights/ (the result), train_log.jsonl (loss and throughput per
            `log_every` steps, appended across resumes), summary.json (this invocation's throughput and peak
            GPU memory) and samples/ (grids every `sample_every` steps).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = (
            torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    else:
        device = resolve_device(config.device)
    if config.batch_size % (config.micro_batch_size * world):
        raise StageError(
            f"batch_size {config.batch_size} is not a multiple of micro_batch_size × GPUs "
            f"({config.micro_batch_size} × {world})"
        )
    accumulation = config.batch_size // (config.micro_batch_size * world)
    sources = find_clip_sources(data_dir)
    pipe = load_fourdm(weights_dir).to(device)
    params = _trainable(pipe, config.mode)
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    model = pipe.unet
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            pipe.unet, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=config.weight_decay)
    ema = {k: p.detach().clone() for k, p in params.items()} if config.ema_decay > 0 else None
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = _load_checkpoint(output_dir, params, optimizer, ema)
    autocast = torch.bfloat16 if config.mixed_precision == "bf16" else None
    log.info(
        "training %s: %d trainable tensors (%d parameters), %d sources, steps %d→%d, %d GPU(s), accumulation %d",
        config.mode,
        len(params),
        sum(p.numel() for p in params.values()),
        len(sources),
        start,
        config.num_steps,
        world,
        accumulation,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    subject = Path(data_dir).name
    tracking = stage_run("mvgen-train", config, subject=subject) if rank == 0 else nullcontext(Tracker(None))
    with tracking as tracker:
        pipe.unet.train()
        steps = range(start, config.num_steps)
        # One bar or log, not one per GPU.
        steps = progress(steps, desc="4DM training", total=config.num_steps, initial=start) if rank == 0 else steps
        began = last_time = time.perf_counter()
        last_step = start
        for step in steps:
            total = 0.0
            for micro in range(accumulation):
                gen = step_generator(config.seed, step, rank * accumulation + micro)
                samples = [
                    sample_clip(sources, config.num_frames, config.frame_stride, config.size_px, gen)
                    for _ in range(config.micro_batch_size)
                ]
                # Gradients are all-reduced once per optimiser step, on the last micro-batch.
                sync = model.no_sync() if world > 1 and micro < accumulation - 1 else nullcontext()
                with sync:
                    loss = training_loss(pipe, samples, gen, config.condition_dropout, autocast, model) / accumulation
                    loss.backward()
                total += float(loss.detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                with torch.no_grad():
                    for k, p in params.items():
                        ema[k].lerp_(p.detach(), 1.0 - config.ema_decay)
            done = step + 1
            if done % config.log_every == 0 or done == config.num_steps:  # every rank: the loss is all-reduced
                loss_mean = _mean_over_ranks(total, device, world)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                clips_per_s = (done - last_step) * config.batch_size / (now - last_time)
                last_time, last_step = now, done
                if rank == 0:
                    steps.set_postfix({"loss": loss_mean, "clips/s": clips_per_s})  # type: ignore[union-attr]
                    tracker.log_metrics({"train/loss": loss_mean, "train/clips_per_s": clips_per_s}, step=done)
                    record = {"step": done, "loss": loss_mean, "clips_per_s": clips_per_s, "elapsed_s": now - began}
                    with open(output_dir / TRAIN_LOG, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
            if rank == 0 and (done % config.checkpoint_every == 0 or done == config.num_steps):
                _save_checkpoint(output_dir, done, params, optimizer, ema)
            if rank == 0 and config.sample_every and (done % config.sample_every == 0 or done == config.num_steps):
                grid = write_sample_grid(pipe, sources, config, output_dir / SAMPLES / f"step_{done:06d}.png")
                tracker.log_artifact(grid, SAMPLES)
        wall = time.perf_counter() - began
        if rank == 0:
            _write_summary(output_dir, config, start, world, accumulation, wall, device)
            if ema is not None:
                with torch.no_grad():
                    for k, p in params.items():
                        p.copy_(ema[k])
            export = output_dir / "weights"
            shutil.rmtree(export, ignore_errors=True)
            pipe.unet.eval()
            pipe.save_pretrained(export)
            log.info("exported %s", export)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return output_dir / "weights"


@torch.no_grad()
def write_sample_grid(pipe: FourDMPipeline, sources: list, config: TrainConfig, path: Path) -> Path:
    """A sample grid of the current weights: the first row is the conditioning video, then per view (0/90/180/270°
    from it) the ground truth and the sample. The clip is the same at every call (drawn from `config.seed`), and
    no generator of the training run is touched, so sampling does not change what the run trains on."""
    gen = torch.Generator().manual_seed(config.seed)
    sample = sample_clip(sources, config.num_frames, config.frame_stride, config.size_px, gen, aligned=True)
    training = pipe.unet.training
    pipe.unet.eval()
    out = pipe(
        sample.condition,
        sample.caption,
        negative_prompt="",
        num_inference_steps=config.sample_steps,
        guidance_scale=config.sample_guidance_scale,
        generator=torch.Generator(pipe.device).manual_seed(config.seed),
    ).images  # (4, F, H, W, 3) in [0, 1]
    pipe.unet.train(training)
    rows = [sample.condition]
    for k in range(4):
        rows += [sample.views[k], (np.clip(out[k], 0.0, 1.0) * 255.0).round().astype(np.uint8)]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    write_rgba(path, np.dstack([grid, np.full(grid.shape[:2], 255, np.uint8)]))
    return path


def _mean_over_ranks(value: float, device: torch.device, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t) / world


def _write_summary(
    output_dir: Path,
    config: TrainConfig,
    start: int,
    world: int,
    accumulation: int,
    wall: float,
    device: torch.device,
) -> None:
    """summary.json of this invocation: steps, GPUs, wall time, clips/s, rank 0's peak GPU memory."""
    steps = config.num_steps - start
    summary = {
        "steps": steps,
        "first_step": start,
        "world_size": world,
        "accumulation": accumulation,
        "batch_size": config.batch_size,
        "micro_batch_size": config.micro_batch_size,
        "wall_s": wall,
        "clips_per_s": steps * config.batch_size / wall if wall > 0 else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_memory_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "peak_memory_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
    }
    (output_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
