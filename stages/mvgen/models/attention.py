"""Spatial attention of the ImageDream multi-view UNet: 3D self-attention across views, decoupled IP cross-attention.

Spec §2.1. Module and parameter names follow the LDM code (`attn1`, `attn2.to_k_ip`, `ff.net.0.proj`, ...) so the
official checkpoints load without renaming. Attention itself is `scaled_dot_product_attention`, which computes
the same softmax(qkᵀ/√d)v as the xformers kernel the official code calls.

Adapted in structure (not code) from aejion/4Diffusion@627d0cd:threestudio/models/imagedream/imagedream/ldm/modules/
attention.py (MIT, ImageDream/MVDream lineage).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossAttention", "FeedForward", "BasicTransformerBlock3D", "SpatialTransformer3D", "attention"]


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head attention on (B, L, heads·d) tensors → (B, Lq, heads·d)."""
    b, lq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, d)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, lq, inner)  # (B, Lq, heads·d)


class CrossAttention(nn.Module):
    """q/k/v projections without bias, output projection with bias; optional image-prompt keys/values.

    With `num_ip_tokens > 0` the last `num_ip_tokens` context tokens are image-prompt tokens, attended through
    their own `to_k_ip`/`to_v_ip` and added with weight `ip_weight` (IP-Adapter decoupled cross-attention).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        num_ip_tokens: int = 0,
        ip_weight: float = 1.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.num_ip_tokens, self.ip_weight = heads, num_ip_tokens, ip_weight
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        if num_ip_tokens:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (B, L, query_dim); context: (B, T [+ ip tokens], context_dim) or None for self-attention."""
        q = self.to_q(x)
        if context is None:
            return self.to_out(attention(q, self.to_k(x), self.to_v(x), self.heads))
        if self.num_ip_tokens:
            text, ip = context[:, : -self.num_ip_tokens], context[:, -self.num_ip_tokens :]
            out = attention(q, self.to_k(text), self.to_v(text), self.heads)
            out = out + self.ip_weight * attention(q, self.to_k_ip(ip), self.to_v_ip(ip), self.heads)
            return self.to_out(out)
        return self.to_out(attention(q, self.to_k(context), self.to_v(context), self.heads))


class GEGLU(nn.Module):
    """Gated GELU input projection (`proj` holds both halves)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, mult 4: `net.0.proj` (C → 8C), `net.2` (4C → C)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """Self-attention over all tokens of the `num_views` slots of a frame, then per-view cross-attention and FF."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, context_dim: int, num_ip_tokens: int, ip_weight: float
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim, num_ip_tokens, ip_weight)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_views: int) -> Tensor:
        """x: (B·V, L, C) with the V slots of one frame consecutive; context: (B·V, T, context_dim)."""
        bv, length, c = x.shape
        x = x.reshape(bv // num_views, num_views * length, c)  # (B, V·L, C): one sequence per frame
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bv, length, c)  # (B·V, L, C)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    """GroupNorm → linear proj_in → 3D transformer block(s) → zero-initialised linear proj_out → residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int,
        num_ip_tokens: int,
        ip_weight: float,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, heads, dim_head, context_dim, num_ip_tokens, ip_weight)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor, num_views: int) -> Tensor:
        """x: (B·V, C, H, W) → same shape."""
        bv, c, h, w = x.shape
        residual = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(bv, h * w, c)  # (B·V, HW, C)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, num_views)
        x = self.proj_out(x)
        # Back in the input's memory layout: a layout change would make the next convolution pick another kernel
        # (and the UNet with identity motion modules would then differ from ImageDream's in float).
        layout = torch.channels_last if residual.is_contiguous(memory_format=torch.channels_last) else None
        out = x.reshape(bv, h, w, c).permute(0, 3, 1, 2)
        out = out.contiguous(memory_format=layout) if layout is not None else out.contiguous()
        return out + residual
