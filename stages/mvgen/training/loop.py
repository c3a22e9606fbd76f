"""The UNet phase: one loop for every recipe (eq. 7 on micro-batches from `batches.py`).

Per optimiser step: the learning rate (linear warm-up from `warm_from`), the micro-batches of this process
(gradients accumulated, all-reduced once on the last under DistributedDataParallel), an optional gradient clip,
AdamW, the EMA, then a log line, a checkpoint and a sample grid when due. A run stops at `schedule.steps` or at its
deadline (every process stops at the same step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from stages.mvgen.pipeline_fourdm import FourDMPipeline
from stages.mvgen.training.checkpoint import TrainState
from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.ema import EMA
from stages.mvgen.training.report import TrainLog

__all__ = ["trainable", "train_unet"]


def trainable(pipe: FourDMPipeline, mode: str) -> dict[str, nn.Parameter]:
    """The UNet parameters `optim.mode` trains (`paper`: the motion modules only), by name, in module order."""
    unet = pipe.unet
    unet.requires_grad_(True)
    if mode == "paper":
        unet.freeze_spatial_layers()
    return {name: p for name, p in unet.named_parameters() if p.requires_grad}


def _stop(deadline: float, world: int, device: torch.device) -> bool:
    """Past the deadline on any process (so that all stop at the same step)."""
    late = time.monotonic() > deadline
    if world == 1 or math.isinf(deadline):
        return late
    flag = torch.tensor([float(late)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def train_unet(
    pipe: FourDMPipeline,
    params: dict[str, nn.Parameter],
    loss_fn: Callable[[int, int, nn.Module], torch.Tensor],
    config: TrainConfig,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    *,
    denoiser: nn.Module,
    warm_from: int,
    deadline: float,
    logger: TrainLog,
    on_checkpoint: Callable[[], None],
    on_sample: Callable[[int], None],
    world: int = 1,
    rank: int = 0,
) -> None:
    """Train up to `schedule.steps` or `deadline`; `loss_fn(step, index, denoiser)` is micro-batch `index` (of the
    global batch) of step `step`; `denoiser` the module to call (the UNet, its DDP wrapper or its compiled form)."""
    sched, opt = config.schedule, config.optim
    accumulation = sched.batch_size // (sched.micro_batch_size * world)
    pipe.unet.train()
    t0 = time.monotonic()
    for step in range(state.unet_step, sched.steps):
        if _stop(deadline, world, pipe.device):
            break
        lr = opt.learning_rate * min(1.0, (step - warm_from + 1) / max(1, opt.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=pipe.device)
        for micro in range(accumulation):
            # Gradients are all-reduced once per optimiser step, on the last micro-batch.
            last = micro == accumulation - 1
            with denoiser.no_sync() if world > 1 and not last else nullcontext():  # type: ignore[operator]
                loss = loss_fn(step, rank * accumulation + micro, denoiser) / accumulation
                loss.backward()
            total += loss.detach()
        parts = {}
        if opt.grad_clip > 0:
            parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(list(params.values()), opt.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        state.unet_step = step + 1
        state.windows += sched.batch_size
        logger.add("unet", state.unet_step, total, parts, lr, sched.batch_size)
        if state.unet_step % sched.checkpoint_every == 0 and state.unet_step < sched.steps:
            state.seconds["unet"] = state.seconds.get("unet", 0.0) + time.monotonic() - t0
            t0 = time.monotonic()
            on_checkpoint()
        if sched.sample_every and (state.unet_step % sched.sample_every == 0 or state.unet_step == sched.steps):
            on_sample(state.unet_step)
    state.seconds["unet"] = state.seconds.get("unet", 0.0) + time.monotonic() - t0
    pipe.unet.eval()
