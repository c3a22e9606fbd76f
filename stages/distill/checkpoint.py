"""Atomic, resumable checkpoints of the distill trainer: field, occupancy grid, optimiser state, generator, step.

One safetensors file (no pickles): a resume restores every random draw's source, so the run continues bit for bit
as if it had never stopped. Its metadata ties it to the run that wrote it (the config's hash and the content hash
of every input), and only that run resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from stages.common.config import config_sha256
from stages.common.errors import StageError
from stages.distill.config import DistillConfig
from stages.distill.renderer import OccupancyGrid

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "Resumable",
    "StaleCheckpoint",
    "state_tensors",
    "save_checkpoint",
    "load_checkpoint",
    "resume_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "fourd.distill.ckpt/v2"
"""v2 adds `inputs_sha256`; a v1 checkpoint is stale (another run) and is replaced."""


class Resumable(Protocol):
    """What a checkpoint holds (`Trainer`, or `GaussianTrainer`: its Gaussians as the field, no occupancy grid)."""

    config: DistillConfig
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int

    @property
    def field(self) -> nn.Module: ...  # read-only members: the trainers' own types are narrower

    @property
    def occupancy(self) -> OccupancyGrid | None: ...


def state_tensors(trainer: Resumable) -> dict[str, Tensor]:
    """Everything a resume needs, as a flat name → tensor mapping (safetensors, no pickles)."""
    state = {f"{prefix}{k}": v for prefix, module in _modules(trainer) for k, v in module.state_dict().items()}
    for index, param_state in trainer.optimizer.state_dict()["state"].items():
        for key, value in param_state.items():
            state[f"optimizer.{index}.{key}"] = value.reshape(-1) if value.ndim == 0 else value
    state["rng.cpu"] = trainer.generator.get_state()
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _modules(trainer: Resumable) -> list[tuple[str, nn.Module]]:
    """The modules a checkpoint holds, by key prefix: the field, and the occupancy grid when there is one."""
    found: list[tuple[str, nn.Module]] = [("field.", trainer.field)]
    return found + ([("occupancy.", trainer.occupancy)] if trainer.occupancy is not None else [])


class StaleCheckpoint(StageError):
    """A checkpoint that cannot resume this run (another config or inputs, another layout, unreadable): the
    trainer removes it and starts fresh instead of failing."""


def save_checkpoint(
    trainer: Resumable,
    path: Path,
    *,
    inputs_sha256: str = "",
    metrics: dict[str, float] | None = None,
    history: list[dict[str, float]] | None = None,
) -> None:
    """Write the checkpoint through a temp file and a rename: a kill at any moment leaves the old or the new.

    `metrics` (the step's logged terms) and `history` (every logged step so far, `{"step": …, <term>: …}`) travel
    in the metadata, so a resumed run reports the same metrics and train log as one that never stopped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {
        "step": str(trainer.step),
        "format": CHECKPOINT_FORMAT,
        "config_sha256": config_sha256(trainer.config),
        "inputs_sha256": inputs_sha256,
        "metrics": json.dumps(metrics or {}),
        "history": json.dumps(history or []),
    }
    save_file(state_tensors(trainer), str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(trainer: Resumable, path: Path, *, inputs_sha256: str = "") -> dict[str, float]:
    """Restore a `save_checkpoint` file of this very run (same config, same inputs) into `trainer`.

    Everything is checked before anything is restored, so a refused checkpoint leaves the trainer untouched.

    Returns:
        The metrics of the step the checkpoint was written at.

    Raises:
        StaleCheckpoint: the file is unreadable, or was written by another run: another config, other inputs
            or another field layout (the message says which).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any reader failure means the same to the user
        raise StaleCheckpoint(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise StaleCheckpoint(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    if meta.get("config_sha256") != config_sha256(trainer.config):
        raise StaleCheckpoint(f"{path}: written with another config")
    if meta.get("inputs_sha256") != inputs_sha256:
        raise StaleCheckpoint(f"{path}: written from other inputs (their content hash differs)")
    for prefix, module in _modules(trainer):
        want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k[len(prefix) :]: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}
        if want != got:
            raise StaleCheckpoint(f"{path}: its {prefix[:-1]} layout differs from the configured one")
    for prefix, module in _modules(trainer):
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    template = trainer.optimizer.state_dict()
    params: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            params.setdefault(int(index), {})[name] = value.reshape(()) if name == "step" else value
    trainer.optimizer.load_state_dict({"state": params, "param_groups": template["param_groups"]})
    trainer.generator.set_state(state["rng.cpu"])
    trainer.step = int(meta["step"])
    return {k: float(v) for k, v in json.loads(meta.get("metrics", "{}")).items()}


def resume_checkpoint(
    trainer: Resumable, path: Path, inputs_sha256: str
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Resume `trainer` from `path` when it holds this run's checkpoint; remove any other one (a warning) and the
    temp file of a save cut short by a kill, so training starts fresh.

    Returns:
        The metrics of the checkpoint's step and its logged history (both empty when training starts fresh).
    """
    from safetensors import safe_open

    path = Path(path)
    path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
    if not path.is_file():
        return {}, []
    try:
        metrics = load_checkpoint(trainer, path, inputs_sha256=inputs_sha256)
    except StaleCheckpoint as err:
        log.warning("%s: removed it, training starts at step 0", err)
        path.unlink()
        return {}, []
    with safe_open(str(path), "pt") as fh:
        history = json.loads((fh.metadata() or {}).get("history", "[]"))
    log.info("resumed from %s at step %d", path.parent, trainer.step)
    return metrics, history
