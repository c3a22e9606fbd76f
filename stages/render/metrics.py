"""Curation measurements of a rendered clip (spec §2.7: the paper dropped static objects and objects that leave
the scene by hand; we measure both and let `curation` thresholds decide)."""

from __future__ import annotations

import numpy as np

from stages.render.config import CurationConfig

__all__ = ["compute_clip_metrics", "curation_failures"]


def _masks(frames: np.ndarray) -> np.ndarray:
    return frames[..., 3] > 127


def compute_clip_metrics(views: np.ndarray, travel_ratio: float) -> dict[str, float]:
    """Motion, framing and coverage of a clip, from its ground-truth renders.

    Args:
        views: uint8 (V, F, H, W, 4) straight-alpha RGBA renders of the ground-truth views.
        travel_ratio: clip-wide bounding-box diagonal / mean per-frame diagonal (from the geometry).

    Returns:
        `motion`: mean over views and consecutive frame pairs of 1 − IoU of the silhouettes (alpha > 0.5);
        `motion_rgb`: mean |Δ| of alpha-premultiplied RGB in [0, 1] over the union of the two silhouettes;
        `out_of_frame_frac`: fraction of images whose silhouette touches the image border;
        `coverage_min` / `coverage_mean`: fraction of the image the silhouette covers;
        `travel_ratio`: as given. A single-frame clip has zero motion.
    """
    masks = _masks(views)  # (V, F, H, W)
    premult = views[..., :3].astype(np.float32) * (views[..., 3:4].astype(np.float32) / 255.0) / 255.0
    ious, rgb = [], []
    for v in range(views.shape[0]):
        for f in range(views.shape[1] - 1):
            a, b = masks[v, f], masks[v, f + 1]
            union = a | b
            n = int(union.sum())
            ious.append(1.0 - (int((a & b).sum()) / n if n else 1.0))
            rgb.append(float(np.abs(premult[v, f + 1] - premult[v, f])[union].mean()) if n else 0.0)
    border = (
        masks[..., 0, :].any(-1) | masks[..., -1, :].any(-1) | masks[..., :, 0].any(-1) | masks[..., :, -1].any(-1)
    )
    coverage = masks.mean(axis=(-2, -1))  # (V, F)
    return {
        "motion": float(np.mean(ious)) if ious else 0.0,
        "motion_rgb": float(np.mean(rgb)) if rgb else 0.0,
        "out_of_frame_frac": float(border.mean()),
        "coverage_min": float(coverage.min()),
        "coverage_mean": float(coverage.mean()),
        "travel_ratio": float(travel_ratio),
    }


def curation_failures(metrics: dict[str, float], config: CurationConfig) -> list[str]:
    """Human-readable reasons the clip fails the thresholds (empty when it passes)."""
    checks = [
        ("motion", metrics["motion"] < config.min_motion, f"< min_motion {config.min_motion:g} (static)"),
        (
            "out_of_frame_frac",
            metrics["out_of_frame_frac"] > config.max_out_of_frame_frac,
            f"> max_out_of_frame_frac {config.max_out_of_frame_frac:g}",
        ),
        (
            "travel_ratio",
            metrics["travel_ratio"] > config.max_travel_ratio,
            f"> max_travel_ratio {config.max_travel_ratio:g} (leaves its place)",
        ),
        ("coverage_min", metrics["coverage_min"] < config.min_coverage, f"< min_coverage {config.min_coverage:g}"),
    ]
    return [f"{key} {metrics[key]:.4g} {why}" for key, failed, why in checks if failed]
