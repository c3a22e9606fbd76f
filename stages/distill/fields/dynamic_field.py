"""DynamicNeRFField: (x, t) → density, RGB, from a 3D and a 4D hash grid whose features are summed.

Spec §4.1 (threestudio `ImplicitVolume` + `TCNNEncodingSpatialTime` of 4Diffusion, from sherwinbahmani/4dfy):
- points in the scene box [-R, R]^3 are mapped to [0, 1]^3; f(x, t) = HashGrid3D(x) + HashGrid4D(x, t);
- density = softplus(MLP_σ(f) + λ_blob·(1 − ‖x‖/r_blob)) ("blob_magic3d", x in world units);
- colour = sigmoid(MLP_c(f)), view-independent (paper eq. 9);
- both MLPs are `VanillaMLP`s: Linear → ReLU → Linear, no biases, run in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.distill.fields import hash_grid_triton
from stages.distill.fields.hash_grid_4d import HashGridEncoding

__all__ = ["DynamicNeRFField", "FieldOutputs", "VanillaMLP"]


@dataclass
class FieldOutputs:
    """Per-point outputs. density: (N,) ≥ 0, per world unit; rgb: (N, 3) in [0, 1]."""

    density: Tensor
    rgb: Tensor


class VanillaMLP(nn.Module):
    """threestudio's `VanillaMLP` without biases: in → hidden (ReLU) ×n → out, no output activation."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_hidden_layers: int = 1) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * num_hidden_layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b, bias=False), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], out_dim, bias=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DynamicNeRFField(nn.Module):
    """The 4D representation of the paper (module docstring).

    Args:
        num_levels, features_per_level, log2_hashmap_size, base_resolution, per_level_scale: both hash grids'
            configuration (paper Table 3: 16, 2, 19, 16, 1.447269237440378).
        hidden_dim: width of the density and colour MLPs (64).
        num_hidden_layers: hidden layers per MLP (1).
        blob_density: λ_blob of the density bias (10).
        blob_radius: r_blob, world units (0.5).
        bbox_radius: half side R of the scene box (1).
        backend: hash grid implementation, `torch`, `tcnn` or `triton`.
    """

    def __init__(
        self,
        *,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        hidden_dim: int = 64,
        num_hidden_layers: int = 1,
        blob_density: float = 10.0,
        blob_radius: float = 0.5,
        bbox_radius: float = 1.0,
        backend: Literal["torch", "tcnn", "triton"] = "torch",
    ) -> None:
        super().__init__()
        grid = dict(
            num_levels=num_levels,
            features_per_level=features_per_level,
            log2_hashmap_size=log2_hashmap_size,
            base_resolution=base_resolution,
            per_level_scale=per_level_scale,
            backend=backend,
        )
        self.grid_xyz = HashGridEncoding(3, **grid)
        self.grid_xyzt = HashGridEncoding(4, **grid)
        dim = self.grid_xyz.output_dim
        self.density_mlp = VanillaMLP(dim, hidden_dim, 1, num_hidden_layers)
        self.feature_mlp = VanillaMLP(dim, hidden_dim, 3, num_hidden_layers)
        self.blob_density, self.blob_radius, self.bbox_radius = blob_density, blob_radius, bbox_radius

    def grid_parameters(self) -> list[nn.Parameter]:
        """The hash tables (their own learning rate, spec §5.4)."""
        return [self.grid_xyz.params, self.grid_xyzt.params]

    def mlp_parameters(self) -> list[nn.Parameter]:
        return [*self.density_mlp.parameters(), *self.feature_mlp.parameters()]

    def encode(self, x: Tensor, t: Tensor) -> Tensor:
        """Summed grid features (N, L·F) of world points x (N, 3) in the box at times t (N,) in [0, 1]."""
        unit = ((x + self.bbox_radius) / (2 * self.bbox_radius)).clamp(0.0, 1.0)  # (N, 3) in [0, 1]
        xyzt = torch.cat([unit, t[:, None].to(unit.dtype)], dim=-1)  # (N, 4)
        if self.grid_xyz.backend == "triton" and hash_grid_triton.available_for(xyzt):
            # Both grids in one fused pass, summed in the kernel (same numbers as the two calls below).
            return hash_grid_triton.encode_pair(
                xyzt.float(),
                self.grid_xyz.params,
                self.grid_xyzt.params,
                self.grid_xyz.level_tables(xyzt.device),
                self.grid_xyzt.level_tables(xyzt.device),
                self.grid_xyz.features_per_level,
            )
        return self.grid_xyz(unit) + self.grid_xyzt(xyzt)

    def density(self, x: Tensor, t: Tensor) -> Tensor:
        """Density (N,) only (occupancy updates, pruning)."""
        raw = self.density_mlp(self.encode(x, t))[:, 0]
        return F.softplus(raw + self._blob(x))

    def forward(self, x: Tensor, t: Tensor) -> FieldOutputs:
        """Density and colour of world points x (N, 3) at times t (N,)."""
        features = self.encode(x, t)
        density = F.softplus(self.density_mlp(features)[:, 0] + self._blob(x))
        return FieldOutputs(density=density, rgb=torch.sigmoid(self.feature_mlp(features)))

    def _blob(self, x: Tensor) -> Tensor:
        # threestudio "blob_magic3d": a positive bias inside radius r_blob that starts the optimisation from a ball.
        return self.blob_density * (1.0 - x.norm(dim=-1) / self.blob_radius)
