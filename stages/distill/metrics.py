"""What a training step reports: its logged terms as floats, and the ones a progress line shows."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PROGRESS_METRICS", "metrics_to_floats"]

PROGRESS_METRICS = (
    "loss/total",
    "loss/sds",
    "loss/anchor_lpips",
    "loss/anchor_dssim",
    "loss/anchor_l1",
    "loss/reconstruction_rgb",
    "psnr/anchor",
)
"""The metrics a progress line or bar shows (when the step computes them), read every `log_every_steps`."""


def metrics_to_floats(metrics: dict[str, Tensor | float]) -> dict[str, float]:
    """Logged terms as Python floats: the tensors are read from the device in one transfer."""
    names = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).tolist() if names else []
    floats = dict(zip(names, values, strict=True))
    return {k: floats[k] if k in floats else float(v) for k, v in metrics.items()}
