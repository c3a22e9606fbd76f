"""Train 4DM (spec §2.6–2.7, eq. 7) with one recipe-agnostic run: from FourDM weights (`--weights`, the paper: the
motion modules of ImageDream) or built from `model` and trained from scratch (the demo model: VAE phase, then UNet).

    python -m stages.mvgen.training --config configs/train_fourdm.yaml --data data/render \
        --weights weights/fourdm --output runs/fourdm
    python -m stages.mvgen.training --config configs/demo/train_fourdm.yaml --data out/demo-renders \
        --output runs/demo-model [--minutes 8]

Runs resume from `<output>/checkpoint`; every step draws its windows, noise, timesteps and dropout from generators
derived from (seed, step, micro-batch), so a resumed run equals an uninterrupted one and N GPUs (`torchrun
--nproc_per_node N`) train on what one GPU with N-fold accumulation does. The result is `<output>/fourdm` (the EMA
weights when `optim.ema_decay > 0`), with train_log.jsonl, summary.json, samples/ and, with
`schedule.final_report`, report.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.common.config import config_sha256
from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.common.tracking import Tracker, stage_run
from stages.mvgen.pipeline_fourdm import FourDMPipeline, load_fourdm
from stages.mvgen.training import PROCESS_START
from stages.mvgen.training.bank import load_clip_bank
from stages.mvgen.training.batches import DiskBatches, MemoryBatches, build_caches
from stages.mvgen.training.build import DTYPES, build_pipeline, round_to
from stages.mvgen.training.camera_check import check_cameras
from stages.mvgen.training.checkpoint import (
    CHECKPOINT,
    EXPORT,
    SAMPLES,
    TrainState,
    export_pipeline,
    load_checkpoint,
    load_trained_vae,
    save_checkpoint,
)
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.dataset import find_clip_sources
from stages.mvgen.training.ema import EMA
from stages.mvgen.training.loop import train_unet, trainable
from stages.mvgen.training.report import LOG_FILE, SUMMARY, TrainLog, write_report
from stages.mvgen.training.samples import write_sample_grid, write_samples, write_vae_samples
from stages.mvgen.training.vae_phase import fit_scaling_factor, latent_statistics, train_vae

__all__ = ["run"]

log = logging.getLogger(__name__)


def _model(config: TrainConfig, weights_dir: Path | None, device: torch.device):  # noqa: ANN202
    """(pipe, frozen dtype): the weights' pipeline, or one built from `config.model` with its encoders held at the
    export precision."""
    if weights_dir is not None:
        return load_fourdm(weights_dir).to(device), torch.float32
    with tempfile.TemporaryDirectory() as tok_dir:
        pipe = build_pipeline(config, Path(tok_dir)).to(device)
    frozen = DTYPES[config.export_dtype]
    round_to(pipe.text_encoder, frozen)
    round_to(pipe.image_encoder, frozen)
    return pipe, frozen


def _export_from_checkpoint(config: TrainConfig, output_dir: Path, weights_dir: Path | None) -> Path:
    """`export_only`: checkpoint/ → fourdm/ on this machine."""
    pipe, _ = _model(config, weights_dir, torch.device("cpu"))
    params = trainable(pipe, config.optim.mode)
    ema = {k: p.detach().clone() for k, p in params.items()}
    state = load_checkpoint(output_dir / CHECKPOINT, pipe, params, ema, None, built=weights_dir is None)
    if state is None or state.unet_step == 0:
        raise StageError(f"{output_dir / CHECKPOINT}: no checkpoint with a trained UNet to export")
    export_pipeline(pipe, ema, output_dir / EXPORT, DTYPES[config.export_dtype])
    log.info("exported %s (UNet step %d) from %s", output_dir / EXPORT, state.unet_step, output_dir / CHECKPOINT)
    return output_dir / EXPORT


def _distributed(config: TrainConfig) -> tuple[int, int, torch.device]:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world == 1:
        return 1, 0, resolve_device(config.device)
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    cuda = torch.cuda.is_available()
    return world, rank, torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}") if cuda else torch.device("cpu")


@dataclass
class _Trainee:
    """What a run trains: the pipeline, its trained UNet parameters, their EMA and optimiser, the resume state."""

    pipe: FourDMPipeline
    frozen: torch.dtype
    params: dict[str, torch.nn.Parameter]
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    state: TrainState
    resumed_optimizer: bool


def _trainee(config: TrainConfig, output_dir: Path, weights_dir: Path | None, device: torch.device) -> _Trainee:
    """The model (loaded or built), resumed from `<output>/checkpoint` when there is one."""
    pipe, frozen = _model(config, weights_dir, device)
    params = trainable(pipe, config.optim.mode)
    if config.optim.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    opt = config.optim
    ema = EMA(params, opt.ema_decay, opt.ema_warmup) if opt.ema_decay > 0 else None
    optimizer = torch.optim.AdamW(list(params.values()), lr=opt.learning_rate, weight_decay=opt.weight_decay)
    built = weights_dir is None
    state = load_checkpoint(output_dir / CHECKPOINT, pipe, params, ema and ema.shadow, optimizer, built=built)
    if state is None:
        state = TrainState()
        if built and config.vae_phase.reuse:
            state.scaling_factor = load_trained_vae(pipe, Path(config.vae_phase.reuse), frozen)
            state.vae_step = config.vae_phase.steps
    return _Trainee(pipe, frozen, params, ema, optimizer, state, bool(optimizer.state))


def run(
    config: TrainConfig, *, output_dir: Path, data_dir: Path | None = None, weights_dir: Path | None = None
) -> Path:
    """Train (or resume) 4DM and export it to `<output>/fourdm`.

    Args:
        output_dir: run folder: checkpoint/, fourdm/, samples/, train_log.jsonl, summary.json (and report.md).
        data_dir: render artifacts with training rings (`stages.render --train.enabled`), or one of them; not needed
            with `export_only`.
        weights_dir: FourDM weights to start from; without them the model is built from `model` (VAE phase first).

    Raises:
        StageError: no usable training data, a config that does not fit together, or a checkpoint of another model.
    """
    sched, output_dir = config.schedule, Path(output_dir)
    deadline = PROCESS_START + 60.0 * sched.minutes - sched.reserve_s if sched.minutes > 0 else math.inf
    built = weights_dir is None
    if config.export_only:
        return _export_from_checkpoint(config, output_dir, weights_dir)
    if data_dir is None:
        raise StageError("--data is required to train (only export_only works without it)")
    world, rank, device = _distributed(config)
    if sched.batch_size % (sched.micro_batch_size * world):
        raise StageError(
            f"batch_size {sched.batch_size} is not a multiple of micro_batch_size × GPUs "
            f"({sched.micro_batch_size} × {world})"
        )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    sources = find_clip_sources(Path(data_dir))
    needs_vae = built and config.vae_phase.steps > 0
    in_memory = config.data.in_memory or needs_vae
    bank = load_clip_bank(Path(data_dir), config.data.size_px, config.data.num_frames) if in_memory else None
    load_s = time.monotonic() - t0
    t = _trainee(config, output_dir, weights_dir, device)
    pipe, state, start_step = t.pipe, t.state, t.state.unet_step
    log.info(
        "training %s: %d tensors, %d GPU(s), steps %d→%d",
        config.optim.mode,
        len(t.params),
        world,
        start_step,
        sched.steps,
    )  # noqa: E501
    sha = config_sha256(config)
    moments = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.optim.moments_dtype]
    tracking = (
        stage_run("mvgen-train", config, subject=Path(data_dir).name) if rank == 0 else nullcontext(Tracker(None))
    )
    summary: dict = {"config_sha256": sha}
    with tracking as tracker:
        reduce = (lambda x: _mean_over_ranks(x, device, world)) if world > 1 else (lambda x: x)
        logger = TrainLog(
            output_dir / LOG_FILE,
            sched.log_every,
            tracker,
            PROCESS_START,
            write=rank == 0,
            reduce=reduce,
            device=device,
        )  # noqa: E501

        def checkpoint() -> None:
            if rank == 0:
                ema = t.ema and t.ema.shadow
                save_checkpoint(
                    output_dir / CHECKPOINT,
                    pipe,
                    t.params,
                    ema,
                    t.optimizer,
                    state,
                    sha,
                    built=built,
                    frozen_dtype=t.frozen,
                    moments_dtype=moments,
                )  # noqa: E501

        rgb = alpha = None
        if bank is not None:
            rgb, alpha = torch.from_numpy(bank.rgb).to(device), torch.from_numpy(bank.alpha).to(device)
        if needs_vae:  # phase 1: the VAE, then its scaling factor
            if state.vae_step < config.vae_phase.steps:
                train_vae(pipe, rgb, alpha, config, state, deadline, logger)
                checkpoint()
            if state.vae_step < config.vae_phase.steps:
                log.warning("time budget spent in the VAE phase (step %d): rerun to resume", state.vae_step)
                return output_dir / EXPORT
        if built:
            round_to(pipe.vae, t.frozen)  # from here on the VAE is frozen at the shipped precision
            summary["vae"] = {"steps": state.vae_step}
            if bank is not None:
                summary["vae"]["recon_psnr_db"] = write_vae_samples(pipe, rgb, output_dir / SAMPLES)
            if state.scaling_factor is None and bank is not None:
                mean, std = latent_statistics(pipe, rgb)
                state.scaling_factor = fit_scaling_factor(mean, std, config.seed)
                pipe.vae.register_to_config(scaling_factor=state.scaling_factor)
                del mean, std
            summary["vae"]["scaling_factor"] = state.scaling_factor
        else:  # the starting weights' VAE, frozen
            summary["vae"] = {"from": str(weights_dir), "scaling_factor": pipe.vae.config.scaling_factor}
        t1 = time.monotonic()
        if config.data.in_memory:
            batches = MemoryBatches(pipe, bank, build_caches(pipe, bank, rgb), config)
        else:
            batches = DiskBatches(pipe, sources, config)
        cache_s = time.monotonic() - t1
        denoiser = torch.compile(pipe.unet) if config.optim.compile_unet else pipe.unet
        if world > 1:
            ids = [device] if device.type == "cuda" else None
            denoiser = torch.nn.parallel.DistributedDataParallel(pipe.unet, device_ids=ids)

        def sample(step: int) -> None:
            if rank == 0:
                grid = write_sample_grid(pipe, sources, config, output_dir / SAMPLES / f"step_{step:06d}.png")
                tracker.log_artifact(grid, SAMPLES)

        t2 = time.monotonic()
        warm_from = 0 if t.resumed_optimizer else state.unet_step
        train_unet(
            pipe, t.params, batches.loss, config, state, t.optimizer, t.ema, denoiser=denoiser, warm_from=warm_from,
            deadline=deadline, logger=logger, on_checkpoint=checkpoint, on_sample=sample, world=world, rank=rank,
        )  # fmt: skip
        unet_s = time.monotonic() - t2
        checkpoint()
        if rank == 0:
            export_pipeline(pipe, t.ema and t.ema.shadow, output_dir / EXPORT, DTYPES[config.export_dtype])
            del batches
            steps_run = state.unet_step - start_step
            summary.update(
                steps=steps_run,
                first_step=start_step,
                world_size=world,
                accumulation=sched.batch_size // (sched.micro_batch_size * world),
                batch_size=sched.batch_size,
                micro_batch_size=sched.micro_batch_size,
                wall_s=unet_s,
                clips_per_s=steps_run * sched.batch_size / unet_s if unet_s > 0 else None,
                data={
                    "clips": [s.directory.parent.name for s in sources],
                    "size_px": config.data.size_px,
                    "num_frames": config.data.num_frames,
                    "load_s": round(load_s, 2),
                },
                parameters={n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in COUNTED},
                unet={
                    "steps": state.unet_step,
                    "steps_this_run": steps_run,
                    "steps_per_s_this_run": round(steps_run / unet_s, 3) if unet_s > 0 else None,
                    "windows_seen": state.windows,
                    "last_logged_loss": logger.last.get("unet"),
                },
                seconds={**{k: round(v, 1) for k, v in state.seconds.items()}, "caches": round(cache_s, 1)},
                torch=torch.__version__,
                **_device_summary(device),
            )
            if sched.final_report:
                _final_report(config, output_dir, Path(data_dir), bank, device, tracker, state, summary)
            summary["run_wall_s"] = round(time.monotonic() - PROCESS_START, 1)
            (output_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
            if sched.final_report:
                write_report(output_dir, summary)
            log.info("exported %s after %d UNet steps", output_dir / EXPORT, state.unet_step)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return output_dir / EXPORT


COUNTED = ("unet", "vae", "text_encoder", "image_encoder")


def _device_summary(device: torch.device) -> dict:
    """The device's name and this process's peak GPU memory (GiB)."""
    if device.type != "cuda":
        return {
            "device": platform.processor() or "cpu",
            "peak_memory_allocated_gb": None,
            "peak_memory_reserved_gb": None,
        }  # noqa: E501
    return {
        "device": torch.cuda.get_device_name(device),
        "peak_memory_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_memory_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def _final_report(
    config: TrainConfig, output_dir: Path, data_dir: Path, bank, device, tracker, state, summary: dict
) -> None:  # noqa: ANN001
    """Sample grids and PSNR of every subject and the camera check, from the exported folder (the loader the stages
    use); adds them and the recipe to `summary`."""
    if bank is None:
        bank = load_clip_bank(data_dir, config.data.size_px, config.data.num_frames)
    exported = load_fourdm(output_dir / EXPORT).to(device)
    metrics = write_samples(exported, bank, config, output_dir / SAMPLES)
    for name in metrics:
        tracker.log_metrics({f"samples/{name}/{k}": v for k, v in metrics[name].items()}, step=state.unet_step)
    data = config.data
    cameras = check_cameras(
        exported, bank, windows=8, num_frames=data.num_frames, max_stride=data.frame_stride, seed=config.seed,
        front_view_only=data.front_view_only, any_base=data.front_view_any_base,
    )  # fmt: skip
    tracker.log_metrics({f"camera_check/relative_gap_t{r['t']}": r["relative_gap"] for r in cameras})
    recipe_keys = (
        "schedule.batch_size", "optim.learning_rate", "conditioning.condition_dropout",
        "conditioning.drop_with_reference", "data.focus_clip", "data.focus_fraction", "vae_phase.reuse",
        "data.front_view_only", "data.front_view_any_base", "data.focus_any_base", "model.prediction_type",
        "model.zero_terminal_snr", "optim.compile_unet",
    )  # fmt: skip
    dumped = config.model_dump(mode="json")
    recipe = {}
    for key in recipe_keys:
        section, name = key.split(".")
        recipe[key] = dumped[section][name]
    summary["data"].update(subjects=bank.subject_captions, images=len(bank.rgb))
    summary.update(recipe=recipe, samples=metrics, camera_check=cameras)


def _mean_over_ranks(value: float, device: torch.device, world: int) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t) / world
