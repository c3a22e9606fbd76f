"""AnimateDiff-style motion module: self-attention across frames at every (view, pixel) (spec §2.3).

    x (B·F·V, C, H, W) → GroupNorm → proj_in → [PE + temporal self-attn]×2 → GEGLU FF → proj_out (zero-init) → + x

The output projection is zero-initialised, so a fresh module is the identity and 4DM starts as ImageDream. Names
follow the official checkpoint (`temporal_transformer.transformer_blocks.0.attention_blocks.{0,1}...`). Unlike the
official code, which hard-codes 8 frames × 5 slots, the frame and view counts are arguments.

Adapted in structure (not code) from guoyww/AnimateDiff:animatediff/models/motion_module.py (Apache-2.0) as
used by aejion/4Diffusion@627d0cd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stages.mvgen.models.attention import FeedForward, attention

__all__ = ["VanillaTemporalModule", "sinusoidal_positions"]


def sinusoidal_positions(max_len: int, dim: int) -> Tensor:
    """(1, max_len, dim): sin on even channels, cos on odd ones (the official `PositionalEncoding`)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal frame encoding (buffer `pe`, stored in checkpoints)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(max_len, dim), persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the motion module's {self.pe.shape[1]} positions")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(nn.Module):
    """Self-attention along the frame axis, positions added to the input of q, k and v."""

    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: Tensor) -> Tensor:
        """x: (S, F, C), one sequence of F frames per (view, pixel)."""
        x = self.pos_encoder(x)
        return self.to_out(attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(TemporalAttention(dim, heads, max_len) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (S, F, C)."""
        for attn, norm in zip(self.attention_blocks, self.norms, strict=True):
            x = attn(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, norm_num_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)


class VanillaTemporalModule(nn.Module):
    """One motion module (`<block>.temporal_transformer.*`)."""

    def __init__(self, channels: int, heads: int = 8, max_len: int = 32, norm_num_groups: int = 32) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(channels, heads, max_len, norm_num_groups)
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: Tensor, num_frames: int, num_views: int) -> Tensor:
        """x: (B·F·V, C, H, W), rows ordered (b f v) → same shape and order."""
        tt = self.temporal_transformer
        n, c, h, w = x.shape
        b = n // (num_frames * num_views)
        residual = x
        hidden = tt.norm(x).permute(0, 2, 3, 1)  # (B·F·V, H, W, C); GroupNorm is per image, order irrelevant
        hidden = tt.proj_in(hidden)
        hidden = hidden.reshape(b, num_frames, num_views, h * w, c).permute(0, 2, 3, 1, 4)  # (B, V, HW, F, C)
        hidden = hidden.reshape(b * num_views * h * w, num_frames, c)  # one sequence per (b, view, pixel)
        for block in tt.transformer_blocks:
            hidden = block(hidden)
        hidden = tt.proj_out(hidden)
        hidden = hidden.reshape(b, num_views, h, w, num_frames, c).permute(0, 4, 1, 5, 2, 3)  # (B, F, V, C, H, W)
        return hidden.reshape(n, c, h, w) + residual
