"""IP-Adapter-Plus resampler: 257 CLIP-vision tokens → 16 image-prompt tokens (spec §2.1, item 4).

    latents (16 learned queries) ← 4 × [perceiver attention over (image tokens ++ latents), FF] → proj_out → LN

Names match the official `image_embed.*` keys. Adapted in structure (not code) from tencent-ailab/IP-Adapter
`resampler.py` (Apache-2.0) as used by ImageDream.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Resampler"]


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """x: (B, N, D) image features; latents: (B, Q, D) → (B, Q, D)."""
        x, latents = self.norm1(x), self.norm2(latents)
        b, q_len, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))  # split between q and k, as the reference does
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-1, -2)).float(), dim=-1).type(q.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, q_len, -1)  # (B, Q, heads·dim_head)
        return self.to_out(out)


class Resampler(nn.Module):
    def __init__(
        self,
        dim: int = 1024,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 12,
        num_queries: int = 16,
        embedding_dim: int = 1280,
        output_dim: int = 1024,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, dim_head, heads),
                    nn.Sequential(
                        nn.LayerNorm(dim),
                        nn.Linear(dim, dim * ff_mult, bias=False),
                        nn.GELU(),
                        nn.Linear(dim * ff_mult, dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, embedding_dim) CLIP-vision hidden states → (B, num_queries, output_dim)."""
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
