"""The distill training loop behind `Trainer.fit`: resume this run's checkpoint, step, check every term and
parameter is finite, log, validate, checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from stages.common.logs import progress
from stages.distill.checkpoint import CHECKPOINT_FILE, Resumable, resume_checkpoint, save_checkpoint
from stages.distill.metrics import PROGRESS_METRICS, metrics_to_floats
from stages.distill.safety import check_finite

__all__ = ["fit"]


class Steppable(Resumable, Protocol):
    """What the loop drives (`Trainer`)."""

    def step_tensors(self) -> dict[str, Tensor | float]: ...


def fit(
    trainer: Steppable,
    num_steps: int,
    *,
    checkpoint_dir: Path | None,
    inputs_sha256: str,
    on_metrics: Callable[[int, dict[str, float]], None] | None,
    on_validate: Callable[[int], None] | None,
    on_step: Callable[[Any], None] | None,
) -> dict[str, float]:
    """`Trainer.fit` (its docstring documents the arguments)."""
    cfg = trainer.config
    path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    resumed, history = resume_checkpoint(trainer, path, inputs_sha256) if path is not None else ({}, [])
    metrics: dict[str, Tensor | float] = dict(resumed)  # a finished run resumed: its last step's metrics
    for record in history if on_metrics is not None else []:  # a resumed run reports the steps before it too
        on_metrics(int(record["step"]), {k: v for k, v in record.items() if k != "step"})
    first = trainer.step + 1
    steps = progress(range(trainer.step, num_steps), desc="distill", total=num_steps, initial=trainer.step)
    for _ in steps:
        metrics = trainer.step_tensors()
        check_finite(trainer.step, metrics, trainer.field)
        logged = trainer.step % cfg.log_every_steps == 0 or trainer.step == num_steps
        if logged or trainer.step == first:  # the first step too: the first progress line shows losses
            floats = metrics_to_floats(metrics)
            steps.set_postfix({k: floats[k] for k in PROGRESS_METRICS if k in floats})
            if logged:
                history.append({"step": trainer.step, **floats})
                if on_metrics is not None:
                    on_metrics(trainer.step, floats)
        if on_validate is not None and trainer.step % cfg.validate_every_steps == 0:
            on_validate(trainer.step)
        if on_step is not None:
            on_step(trainer)
        if path is not None and (trainer.step % cfg.checkpoint_every_steps == 0 or trainer.step == num_steps):
            save_checkpoint(
                trainer, path, inputs_sha256=inputs_sha256, metrics=metrics_to_floats(metrics), history=history
            )
    return metrics_to_floats(metrics)
