"""Recentre a clip: one square crop box for every frame (no jitter), margin, resize to `size_px`.

The box is the union of the object's bounding boxes over all kept frames, squared around its centre and
grown so the object's longer side fills `1 - 2·margin` of the output. Resizing is done on premultiplied
colour so transparent pixels do not bleed dark fringes into the object's edge.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from stages.common.errors import StageError

__all__ = ["union_box", "square_crop_box", "crop_and_resize"]


def union_box(alphas: list[np.ndarray], threshold: float) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), end-exclusive, of `alpha > threshold` over all frames.

    Raises:
        StageError: a frame has no pixel above the threshold (empty foreground mask).
    """
    x0, y0, x1, y1 = math.inf, math.inf, -math.inf, -math.inf
    for i, alpha in enumerate(alphas):
        ys, xs = np.nonzero(alpha > threshold)
        if xs.size == 0:
            raise StageError(f"empty foreground mask in kept frame {i}: no pixel has alpha > {threshold}")
        x0, x1 = min(x0, int(xs.min())), max(x1, int(xs.max()) + 1)
        y0, y1 = min(y0, int(ys.min())), max(y1, int(ys.max()) + 1)
    return int(x0), int(y0), int(x1), int(y1)


def square_crop_box(box: tuple[int, int, int, int], margin_frac: float) -> tuple[int, int, int, int]:
    """Square (x0, y0, x1, y1) centred on `box` whose side is `max(w, h) / (1 - 2·margin_frac)`, rounded up."""
    x0, y0, x1, y1 = box
    side = math.ceil(max(x1 - x0, y1 - y0) / (1.0 - 2.0 * margin_frac) - 1e-9)
    cx2, cy2 = x0 + x1, y0 + y1  # twice the centre, to stay in integers
    sx0, sy0 = (cx2 - side) // 2, (cy2 - side) // 2
    return sx0, sy0, sx0 + side, sy0 + side


def crop_and_resize(rgba: np.ndarray, crop: tuple[int, int, int, int], size_px: int) -> np.ndarray:
    """Cut `crop` out of uint8 (H, W, 4) straight-alpha RGBA (transparent outside the image) and resize it.

    Area filtering when shrinking, bilinear when enlarging; returns uint8 (size_px, size_px, 4).
    """
    h, w = rgba.shape[:2]
    x0, y0, x1, y1 = crop
    pad_l, pad_t, pad_r, pad_b = max(0, -x0), max(0, -y0), max(0, x1 - w), max(0, y1 - h)
    padded = np.pad(rgba, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))  # zeros: transparent
    patch = padded[y0 + pad_t : y1 + pad_t, x0 + pad_l : x1 + pad_l].astype(np.float32) / 255.0  # (S, S, 4)
    alpha = patch[..., 3:4]
    premultiplied = np.concatenate([patch[..., :3] * alpha, alpha], axis=2)
    side = x1 - x0
    interp = cv2.INTER_AREA if side > size_px else cv2.INTER_LINEAR
    resized = cv2.resize(premultiplied, (size_px, size_px), interpolation=interp) if side != size_px else premultiplied
    out_alpha = np.clip(resized[..., 3:4], 0.0, 1.0)
    rgb = np.where(out_alpha > 1e-6, resized[..., :3] / np.maximum(out_alpha, 1e-6), 0.0)
    out = np.concatenate([np.clip(rgb, 0.0, 1.0), out_alpha], axis=2)
    return np.round(out * 255.0).astype(np.uint8)
