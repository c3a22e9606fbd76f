"""TrainConfig: 4DM training hyperparameters (spec §2.6–2.7; paper §3.2, A.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.common.config import StageConfig

__all__ = ["TrainConfig"]


class TrainConfig(StageConfig):
    """Train 4DM's motion modules (paper mode) or the whole model (scratch mode) on multi-view render clips."""

    mode: Literal["paper", "scratch"] = "paper"
    """`paper`: ImageDream weights frozen, only the motion modules train (spec §2.6). `scratch`: every UNet
    weight trains (for small models without ImageDream weights); VAE and CLIP encoders stay frozen."""
    num_steps: int = Field(30000, ge=1)
    """Optimiser steps (paper: 30k)."""
    batch_size: int = Field(32, ge=1)
    """Clips per optimiser step over all GPUs, gradient accumulation included (paper: 32)."""
    micro_batch_size: int = Field(1, ge=1)
    """Clips per forward pass on one GPU; batch_size must be a multiple of micro_batch_size × GPUs."""
    learning_rate: float = Field(1e-4, gt=0.0)
    """AdamW learning rate (paper: 1e-4)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay (not given by the paper; 0 keeps the frozen-base behaviour simple)."""
    num_frames: int = Field(8, ge=2)
    """Frames per clip (paper: 8)."""
    frame_stride: int = Field(4, ge=1)
    """Step between sampled frames of a rendered clip (paper: stride 4)."""
    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)
    """Probability of training a clip with the reference video and cameras zeroed (eq. 7, for classifier-free
    guidance). The paper does not give p; 0.1 is the usual choice. The text prompt is kept."""
    size_px: int = Field(256, ge=8)
    """Training resolution (paper: 256)."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast for the forward pass (fp32 master weights)."""
    gradient_checkpointing: bool = False
    """Recompute each UNet block's activations in the backward pass instead of keeping them (less memory, about
    a third more compute; gradients are unchanged)."""
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    """Exponential moving average of the trained weights (0 = off); the EMA weights are what gets exported."""
    checkpoint_every: int = Field(500, ge=1)
    """Steps between atomic checkpoints (the run resumes from the last one)."""
    log_every: int = Field(10, ge=1)
    """Steps between MLflow loss logs."""
    sample_every: int = Field(0, ge=0)
    """Steps between sample grids (0 = none): one fixed clip of the data, its views at 0/90/180/270° from the
    conditioning view, sampled with the current weights; written to `samples/step_<n>.png` and to MLflow."""
    sample_steps: int = Field(20, ge=1)
    """DDIM steps of the sample grids."""
    sample_guidance_scale: float = Field(3.0, ge=1.0)
    """CFG scale of the sample grids."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train."""
    seed: int = 0
    """Seed of clip sampling, noise and dropout; each step derives its own generator from it, so a resumed run
    draws exactly what an uninterrupted one would."""
