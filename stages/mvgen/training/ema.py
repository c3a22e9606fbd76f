"""The exponential moving average of the trained UNet parameters (`optim.ema_decay`, `optim.ema_warmup`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """`shadow[k] ← shadow[k] + (1 − d)·(param[k] − shadow[k])` after every optimiser step, with d = `decay`, or with
    `warmup` d = min(decay, (1 + n)/(10 + n)) at step n (early weights fade fast). The shadow starts at the
    parameters and is what gets exported."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float, warmup: bool) -> None:
        self.params, self.decay, self.warmup = params, decay, warmup
        self.shadow: dict[str, Tensor] = {k: p.detach().clone() for k, p in params.items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        keys = list(self.shadow)
        weight = 1.0 - self.decay_at(step)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [self.params[k].detach() for k in keys], weight)
