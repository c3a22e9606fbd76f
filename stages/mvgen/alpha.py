"""Alpha for 4DM's white-background views: distance from white, with colour un-composited to straight alpha.

The official pipeline runs rembg on the generated views (spec §1.1 stage C). 4DM renders objects on pure white,
so the distance from white is a direct, download-free estimate; compositing the result back onto white gives the
generated image again (up to 8-bit rounding).
"""

from __future__ import annotations

import numpy as np

__all__ = ["alpha_from_white"]


def alpha_from_white(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    """float (H, W, 3) RGB in [0, 1] on white → uint8 (H, W, 4) straight-alpha RGBA."""
    if high <= low:
        raise ValueError(f"alpha ramp needs high > low, got {low}..{high}")
    distance = (1.0 - rgb).max(axis=2)
    alpha = np.clip((distance - low) / (high - low), 0.0, 1.0)
    safe = np.maximum(alpha, 1e-6)[..., None]
    straight = np.where(alpha[..., None] > 0, (rgb - (1.0 - alpha[..., None])) / safe, 1.0)
    rgba = np.concatenate([np.clip(straight, 0.0, 1.0), alpha[..., None]], axis=2)
    return np.round(rgba * 255.0).astype(np.uint8)
