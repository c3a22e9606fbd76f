"""Residual, down- and up-sampling blocks of the LDM UNet (names as in the official checkpoints)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupNorm32", "ResBlock", "Downsample", "Upsample"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (LDM `normalization`: 32 groups, eps 1e-5), also for half-precision weights."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


class ResBlock(nn.Module):
    """Two 3×3 convolutions with the (time + camera) embedding added in between; zero-initialised second conv."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int | None = None, norm_num_groups: int = 32
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_num_groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        self.out_layers = nn.Sequential(GroupNorm32(norm_num_groups, out_channels), nn.SiLU(), nn.Dropout(0.0), conv)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (N, C, H, W); emb: (N, E)."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3×3 convolution (`op`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 convolution (`conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
