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
from safetensors.torch import load_file, save_file

from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.common.image_io import write_rgba
from stages.common.logs import progress
from stages.common.tracking import Tracker, stage_run
from stages.mvgen.pipeline_fourdm import FourDMPipeline, load_fourdm
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.dataset import find_clip_sources, sample_clip
from stages.mvgen.training.objective import step_generator, training_loss

__all__ = ["run", "write_sample_grid"]

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"
TRAIN_LOG = "train_log.jsonl"
SAMPLES = "samples"
SUMMARY = "summary.json"


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
