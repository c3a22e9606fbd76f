"""The occupancy grid shared over time: which cells of the scene box the renderer marches through.

Spec §4.2 (nerfacc 0.5.2 `OccGridEstimator`, in pure torch); the grid is shared by all timestamps: a cell's value is
the max over the timestamps of density × step (paper A.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from stages.distill.host import to_device

__all__ = ["OccupancyGrid", "DensityFn"]

DensityFn = Callable[[Tensor], Tensor]


class OccupancyGrid(nn.Module):
    """A binary R³ occupancy grid over the box, with nerfacc's EMA update rule (`OccGridEstimator._update`).

    Args:
        resolution: cells per side (32).
        bbox_radius: half side of the box.
        ema_decay: per-update decay of a cell's stored occupancy (0.95).
        threshold: a cell is occupied when its value exceeds min(threshold, mean value) (0.01).
        warmup_steps: before this step every cell is evaluated, afterwards a quarter at random plus occupied ones.
    """

    def __init__(
        self, resolution: int, bbox_radius: float, ema_decay: float, threshold: float, warmup_steps: int
    ) -> None:
        super().__init__()
        self.resolution, self.bbox_radius = resolution, bbox_radius
        self.ema_decay, self.threshold, self.warmup_steps = ema_decay, threshold, warmup_steps
        self.register_buffer("occupancy", torch.zeros(resolution**3))
        self.register_buffer("binary", torch.zeros(resolution**3, dtype=torch.bool))

    @torch.no_grad()
    def update(self, step: int, density_fn: DensityFn, step_size: float, generator: torch.Generator) -> None:
        """Re-evaluate cells at a random point each with `density_fn(x) · step_size` and refresh the binary grid.

        Args:
            step: the training step (selects the warm-up rule).
            density_fn: world points (N, 3) → (N,) density; for the shared grid, the max over the timestamps.
            step_size: marching step, turns density into the occupancy value nerfacc thresholds.
            generator: CPU generator for the cell choice and the jitter.
        """
        cells = self.resolution**3
        if step < self.warmup_steps:
            indices = torch.arange(cells)
        else:
            uniform = torch.randint(cells, (cells // 4,), generator=generator)
            # The draw below depends on the number of occupied cells: one host copy every update (not every step).
            occupied = torch.nonzero(self.binary.cpu())[:, 0]
            if cells // 4 < len(occupied):
                occupied = occupied[torch.randint(len(occupied), (cells // 4,), generator=generator)]
            indices = torch.cat([uniform, occupied])
        r = self.resolution
        coords = torch.stack([indices // (r * r), (indices // r) % r, indices % r], dim=-1).float()  # (N, 3) ijk
        unit = (coords + torch.rand(coords.shape, generator=generator)) / r  # (N, 3) in [0, 1]
        x = (unit * 2.0 - 1.0) * self.bbox_radius
        device = self.occupancy.device
        occ = density_fn(to_device(x, device)) * step_size
        indices = to_device(indices, device)
        self.occupancy[indices] = torch.maximum(self.occupancy[indices] * self.ema_decay, occ)
        threshold = self.occupancy.clamp(min=0).mean().clamp(max=self.threshold)
        self.binary.copy_(self.occupancy > threshold)

    def occupied_bounds(self) -> tuple[Tensor, Tensor] | None:
        """World-space bounding box (lo (3,), hi (3,)) of the occupied cells, None when no cell is (one host sync)."""
        r = self.resolution
        cells = self.binary.view(r, r, r)
        per_axis = [cells.any(dim=(1, 2)), cells.any(dim=(0, 2)), cells.any(dim=(0, 1))]  # x, y, z
        if not bool(per_axis[0].any()):
            return None
        index = torch.arange(r, device=cells.device)
        first = torch.stack([torch.where(a, index, r).min() for a in per_axis])
        last = torch.stack([torch.where(a, index, -1).max() for a in per_axis])
        cell = 2.0 * self.bbox_radius / r
        return first.float() * cell - self.bbox_radius, (last + 1).float() * cell - self.bbox_radius

    def occupied(self, x: Tensor) -> Tensor:
        """(N,) bool: is the cell holding world point x (N, 3) occupied."""
        r = self.resolution
        ijk = ((x / self.bbox_radius + 1.0) * 0.5 * r).long().clamp(0, r - 1)  # (N, 3)
        return self.binary[(ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]]
