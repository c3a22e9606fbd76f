"""Multi-resolution hash grid encoding (Instant-NGP) with tiny-cuda-nn's exact semantics, 3D or 4D input.

Spec §4.1, paper Table 3. A faithful port of `tcnn.Encoding({"otype": "HashGrid", ...})` (NVlabs/tiny-cuda-nn
`include/tiny-cuda-nn/encodings/grid.h`, BSD-3-Clause), so that a checkpoint trained with one backend loads into
the other:
- level l has scale `s_l = base · per_level_scale^l − 1` (computed as tcnn does, `exp2(l · log2(scale))` in
  float32) and resolution `ceil(s_l) + 1`;
- a level is indexed densely (x + y·R + z·R² + t·R³) while `R^D` fits its table, otherwise by the coherent-prime
  hash `⊕_d pos_d · π_d mod 2^32` with π = (1, 2654435761, 805459861, 3674653429); the index is taken modulo the
  level's table size;
- a level's table holds `min(next_multiple(R^D, 8), 2^log2_hashmap_size)` entries of `F` features;
- a point x ∈ [0, 1]^D sits at `x · s_l + 0.5` in grid units, interpolated linearly from the 2^D corners;
- all tables live in one flat parameter `params` (level-major, then entry, then feature), initialised
  U(−1e-4, 1e-4); the output is (N, L·F), level-major, as tcnn returns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from stages.distill.fields import hash_grid_triton
from stages.distill.fields.hash_grid_triton import LevelTables

__all__ = ["HashGridEncoding", "GridLevel", "grid_levels", "HASH_PRIMES"]

HASH_PRIMES = (1, 2654435761, 805459861, 3674653429)
"""tcnn's coherent-prime hash factors for dimensions x, y, z, t."""
_UINT32 = 0xFFFFFFFF


@dataclass(frozen=True)
class GridLevel:
    """Geometry of one level: its scale, resolution, table size (entries), offset into the tables, dense or hashed."""

    scale: float
    resolution: int
    size: int
    offset: int
    dense: bool


def grid_levels(
    num_dims: int, num_levels: int, log2_hashmap_size: int, base_resolution: int, per_level_scale: float
) -> list[GridLevel]:
    """The per-level layout tcnn computes in `GridEncodingTemplated`'s constructor (module docstring)."""
    log2_scale = np.float32(math.log2(np.float32(per_level_scale)))  # tcnn: std::log2 of the float field
    levels, offset = [], 0
    for level in range(num_levels):
        scale = float(np.exp2(np.float32(level) * log2_scale) * np.float32(base_resolution) - np.float32(1.0))
        resolution = int(math.ceil(np.float32(scale))) + 1
        dense_size = resolution**num_dims
        size = min(-(-dense_size // 8) * 8, 2**log2_hashmap_size)  # next multiple of 8, capped by the table
        levels.append(GridLevel(scale, resolution, size, offset, dense=dense_size <= size))
        offset += size
    return levels


class HashGridEncoding(nn.Module):
    """tcnn-compatible hash grid: (N, D) points in [0, 1]^D → (N, L·F) features.

    Args:
        num_dims: D, 3 for xyz, 4 for xyzt.
        num_levels: L (16 in the paper).
        features_per_level: F (2).
        log2_hashmap_size: log2 of the largest table (19).
        base_resolution: coarsest resolution (16).
        per_level_scale: growth per level (1.447269237440378 reaches 4096 at level 15).
        backend: `torch` (this file, any device), `tcnn` (tinycudann on CUDA) or `triton` (the fused kernels of
            `hash_grid_triton.py` on CUDA, the torch path on CPU); all three share `params` and give the same numbers.
    """

    def __init__(
        self,
        num_dims: int,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        backend: Literal["torch", "tcnn", "triton"] = "torch",
    ) -> None:
        super().__init__()
        if not 1 <= num_dims <= len(HASH_PRIMES):
            raise ValueError(f"num_dims must be 1..{len(HASH_PRIMES)}, got {num_dims}")
        self.num_dims, self.features_per_level = num_dims, features_per_level
        self.levels = grid_levels(num_dims, num_levels, log2_hashmap_size, base_resolution, per_level_scale)
        self.backend = backend
        num_params = (self.levels[-1].offset + self.levels[-1].size) * features_per_level
        self.params = nn.Parameter(torch.empty(num_params).uniform_(-1e-4, 1e-4))
        tcnn_module = None
        if backend == "tcnn":
            tcnn_module = _build_tcnn(
                num_dims, num_levels, features_per_level, log2_hashmap_size, base_resolution, per_level_scale
            )
            if tcnn_module.params.numel() != num_params:
                raise RuntimeError(
                    f"tcnn grid has {tcnn_module.params.numel()} parameters, the torch layout {num_params}"
                )
        # Not a registered submodule: its own `params` is replaced by ours at every call, so the state dict holds
        # exactly one `params` whichever backend runs.
        object.__setattr__(self, "_tcnn", tcnn_module)
        # Corner offsets of the unit hypercube, (2^D, D), bit d of corner c = offset along dimension d.
        corners = torch.tensor([[(c >> d) & 1 for d in range(num_dims)] for c in range(2**num_dims)])
        self.register_buffer("corners", corners, persistent=False)
        primes = torch.tensor(HASH_PRIMES[:num_dims], dtype=torch.int64)
        self.register_buffer("primes", primes, persistent=False)
        self._tables: dict[torch.device, LevelTables] = {}
        if backend == "triton" and not hash_grid_triton.triton_available():
            raise ImportError("hash grid backend 'triton' needs the triton package (pip install triton)")

    @property
    def output_dim(self) -> int:
        return len(self.levels) * self.features_per_level

    def forward(self, x: Tensor) -> Tensor:
        """Encode points.

        Args:
            x: (N, D) float32 in [0, 1]^D.

        Returns:
            (N, L·F) float32 features, level-major.
        """
        if self._tcnn is not None:
            self._tcnn.params = self.params  # share the one parameter: same layout, same checkpoint
            return self._tcnn(x.contiguous()).float()
        if self.backend == "triton" and hash_grid_triton.available_for(x):
            return hash_grid_triton.encode(
                x.float(), self.params, self.level_tables(x.device), self.features_per_level
            )
        return torch.cat([self._encode_level(x, level) for level in self.levels], dim=-1)

    def level_tables(self, device: torch.device) -> LevelTables:
        """The level geometry as tensors on `device` for the Triton kernels (cached per device)."""
        if device not in self._tables:
            for lv in self.levels:  # what the kernels' division-free `index % size` relies on
                largest_dense_index = sum(lv.resolution ** (d + 1) for d in range(self.num_dims))
                if (lv.dense and largest_dense_index >= 2 * lv.size) or (not lv.dense and lv.size & (lv.size - 1)):
                    raise ValueError(f"hash grid level {lv} is outside what the Triton kernels index")
            self._tables[device] = LevelTables(
                scale=torch.tensor([lv.scale for lv in self.levels], dtype=torch.float32, device=device),
                resolution=torch.tensor([lv.resolution for lv in self.levels], dtype=torch.int32, device=device),
                size=torch.tensor([lv.size for lv in self.levels], dtype=torch.int32, device=device),
                offset=torch.tensor([lv.offset for lv in self.levels], dtype=torch.int32, device=device),
                dense=torch.tensor([int(lv.dense) for lv in self.levels], dtype=torch.int32, device=device),
            )
        return self._tables[device]

    def _encode_level(self, x: Tensor, level: GridLevel) -> Tensor:
        # 1. Grid position and fractional part, as tcnn's pos_fract: pos = fmaf(s, x, 0.5), one rounding (the float32
        # product is exact in float64; at 4096 cells a second rounding would move frac by up to 2^-12).
        pos = (x.double() * level.scale + 0.5).to(x.dtype)  # (N, D)
        base = torch.floor(pos)
        frac = pos - base  # (N, D)
        grid = base.long()[:, None, :] + self.corners[None]  # (N, 2^D, D)
        # 2. Linear interpolation weights: ∏_d (frac_d if bit_d else 1 − frac_d).
        weights = torch.where(self.corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)  # (N, 2^D)
        # 3. Table index of each corner: dense while R^D fits, coherent-prime hash otherwise. uint32 wrap-around is
        # one mask at the end (products and sums modulo 2^32 commute with it; XOR is bitwise).
        if level.dense:
            strides = torch.tensor([level.resolution**d for d in range(self.num_dims)], device=x.device)
            index = ((grid * strides).sum(-1) & _UINT32) % level.size  # wraps only for x = 1 exactly, as tcnn
        else:
            hashed = grid * self.primes  # |value| < 2^44: exact in int64
            index = hashed[..., 0]
            for d in range(1, self.num_dims):
                index = index ^ hashed[..., d]
            index = index & (level.size - 1) if level.size & (level.size - 1) == 0 else (index & _UINT32) % level.size
        # 4. Gather the corners' features and blend them.
        F = self.features_per_level
        table = self.params[level.offset * F : (level.offset + level.size) * F].view(level.size, F)
        feats = table[index]  # (N, 2^D, F)
        return (weights[..., None] * feats).sum(1)  # (N, F)


def _build_tcnn(
    num_dims: int,
    num_levels: int,
    features_per_level: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
) -> nn.Module:
    """The tinycudann encoding with the same configuration (CUDA only; see stages/distill/README.md to build it).

    Raises:
        ImportError: tinycudann is not installed.
    """
    import tinycudann as tcnn

    return tcnn.Encoding(
        num_dims,
        {
            "otype": "HashGrid",
            "n_levels": num_levels,
            "n_features_per_level": features_per_level,
            "log2_hashmap_size": log2_hashmap_size,
            "base_resolution": base_resolution,
            "per_level_scale": per_level_scale,
            "interpolation": "Linear",
        },
        dtype=torch.float32,
    )
