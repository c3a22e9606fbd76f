"""Config → object: the trainer's field, optimiser and occupancy grid (one `build_<thing>` each)."""

from __future__ import annotations

import torch

from stages.distill.config import DistillConfig, OptimizerConfig
from stages.distill.fields import DynamicNeRFField
from stages.distill.renderer import OccupancyGrid

__all__ = ["build_field", "field_kwargs", "build_optimizer", "set_learning_rates", "build_occupancy"]


def build_field(cfg: DistillConfig) -> DynamicNeRFField:
    return DynamicNeRFField(**field_kwargs(cfg))


def field_kwargs(cfg: DistillConfig) -> dict:
    """The `DynamicNeRFField` constructor arguments of a config (what `field_config.json` stores)."""
    f = cfg.field
    return dict(
        num_levels=f.num_levels,
        features_per_level=f.features_per_level,
        log2_hashmap_size=f.log2_hashmap_size,
        base_resolution=f.base_resolution,
        per_level_scale=f.per_level_scale,
        hidden_dim=f.hidden_dim,
        num_hidden_layers=f.num_hidden_layers,
        blob_density=f.blob_density,
        blob_radius=f.blob_radius,
        bbox_radius=f.bbox_radius,
        backend=f.backend,
    )


def build_optimizer(field: DynamicNeRFField, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW with the grids at `grid_lr` and the MLPs at `mlp_lr` (spec §5.4)."""
    groups = [
        {"params": field.grid_parameters(), "lr": cfg.grid_lr},
        {"params": field.mlp_parameters(), "lr": cfg.mlp_lr},
    ]
    return torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, step: int, num_steps: int) -> None:
    """The groups' rates at `step` of `num_steps`: `optimizer.final_lr_factor`'s exponential decay (build_optimizer's
    group order: grids, MLPs)."""
    scale = cfg.final_lr_factor ** (step / max(1, num_steps))
    for group, lr in zip(optimizer.param_groups, (cfg.grid_lr, cfg.mlp_lr), strict=True):
        group["lr"] = lr * scale


def build_occupancy(cfg: DistillConfig) -> OccupancyGrid:
    r = cfg.renderer
    return OccupancyGrid(
        r.occupancy_resolution,
        cfg.field.bbox_radius,
        r.occupancy_ema_decay,
        r.occupancy_threshold,
        r.occupancy_warmup_steps,
    )
