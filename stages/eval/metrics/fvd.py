"""FVD: Fréchet distance between I3D features of predicted and ground-truth videos (spec §6; peers §0, §2.2).

Two numbers, named apart because they measure different things:

- `fvd`: the Fréchet distance between the Gaussians fitted to the two *sets* of clips (every predicted view's
  clip vs every ground-truth view's clip), as FVD is defined (Unterthiner et al. 2018) and as VideoGPT/StyleGAN-V
  compute it. Within one subject that is V clips a side (4 in the paper's setting), so its covariance has rank
  ≤ V − 1; pooled over subjects by `python -m stages.eval.aggregate` it is the number to compare runs with.
- `fvd_consistent4d`: what `yanqinJiang/Consistent4D:evaluation/compute_fvd.py` reports and peers copy: one clip
  per view, `np.cov` of a single 400-d row, which under numpy 1.x is the scalar variance of the 400 logits, so
  the score per view is `‖f_pred − f_gt‖² + (sd(f_pred) − sd(f_gt))²` (sd with ddof 1), averaged over views.
  (Under numpy ≥ 2 that script returns NaN; we compute its numpy-1.x value in closed form.)

Features: each frame composited on white, resized to 224² with PIL bicubic per channel in float (the script's
`resize_single_channel`), scaled to [-1, 1]; clips shorter than 9 frames are stretched by repeating frames;
I3D (`inception_i3d.py`) gives 400 Kinetics logits averaged over time.

Weights: `<weights>/i3d/i3d_pretrained_400.pt` (module docstring of `inception_i3d.py`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.common.logs import progress
from stages.eval.metrics.inception_i3d import InceptionI3d
from stages.eval.metrics.weights import load_exact, load_state_dict_file, require

__all__ = [
    "I3D_DIR",
    "I3D_FILE",
    "i3d_weight_file",
    "load_i3d",
    "prepare_clip",
    "compute_i3d_features",
    "frechet_distance",
    "compute_fvd",
    "compute_fvd_consistent4d",
]

I3D_DIR = "i3d"
I3D_FILE = "i3d_pretrained_400.pt"


def i3d_weight_file(weights_dir: Path | None) -> Path:
    """The checkpoint FVD loads, whether or not it exists."""
    return Path(weights_dir or "<weights>") / I3D_DIR / I3D_FILE


def load_i3d(weights_dir: Path | None) -> InceptionI3d:
    """InceptionI3d with the Kinetics-400 weights of `<weights_dir>/i3d/i3d_pretrained_400.pt`.

    Raises:
        MissingWeights: the file is absent.
        StageError: it is not that checkpoint.
    """
    path = i3d_weight_file(weights_dir)
    require(weights_dir, path)
    model = InceptionI3d(num_classes=400)
    load_exact(model, load_state_dict_file(path), path)
    return model.eval().requires_grad_(False)


def prepare_clip(frames: np.ndarray, size_px: int, min_frames: int) -> torch.Tensor:
    """Frames of one video → I3D input.

    Args:
        frames: uint8 (F, H, W, 3) RGB on white.
        size_px: output side (224).
        min_frames: shorter clips repeat every frame `ceil(min_frames / F)` times.

    Returns:
        float32 (3, T, size_px, size_px) in [-1, 1], T = F · repeats.
    """
    resized = np.stack(
        [
            np.stack(
                [
                    np.asarray(Image.fromarray(f[..., c].astype(np.float32), mode="F").resize((size_px, size_px), 3))
                    for c in range(3)
                ],
                axis=-1,
            )
            for f in frames
        ]
    )  # (F, size, size, 3) float32, 0..255 (bicubic may overshoot slightly, as in the reference)
    repeats = max(1, math.ceil(min_frames / len(frames)))
    resized = np.repeat(resized, repeats, axis=0)  # (T, size, size, 3), each frame `repeats` times in a row
    clip = torch.from_numpy(resized / 127.5 - 1.0).float()
    return clip.permute(3, 0, 1, 2).contiguous()  # (T, H, W, 3) → (3, T, H, W)


@torch.no_grad()
def compute_i3d_features(model: InceptionI3d, clips: list[torch.Tensor], device: torch.device) -> np.ndarray:
    """(V,) clips of (3, T, H, W) → float64 (V, 400) time-averaged logits, one clip per forward pass."""
    model = model.to(device)
    clips_done = progress(clips, desc="I3D features", unit="clip")
    return np.stack([model(clip[None].to(device))[0].double().cpu().numpy() for clip in clips_done])


def _psd_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a symmetric PSD matrix with round-off eigenvalues (|λ| ≤ n·ε·λ_max) set to 0.

    A covariance of N < D samples has D − N + 1 zero eigenvalues that come out as ±1e-14; their square roots
    (1e-7 each, hundreds of them) would otherwise bias the trace term.
    """
    values, vectors = np.linalg.eigh((a + a.T) / 2.0)
    floor = len(values) * np.finfo(np.float64).eps * max(float(np.abs(values).max()), 1e-300)
    return np.where(values > floor, values, 0.0), vectors


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    values, vectors = _psd_eigh(a)
    return (vectors * np.sqrt(values)) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """`‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)` for symmetric PSD covariances (singular ones included).

    `tr (Σ1 Σ2)^½ = tr (Σ1^½ Σ2 Σ1^½)^½`, and the right-hand matrix is symmetric PSD, so its square root comes
    from an eigendecomposition with round-off eigenvalues zeroed: no complex parts, no ε on the diagonal.
    """
    root1 = _sqrtm_psd(np.atleast_2d(sigma1))
    tr_covmean = float(np.sqrt(_psd_eigh(root1 @ np.atleast_2d(sigma2) @ root1)[0]).sum())
    diff = np.atleast_1d(mu1) - np.atleast_1d(mu2)
    value = float(diff @ diff + np.trace(np.atleast_2d(sigma1)) + np.trace(np.atleast_2d(sigma2)) - 2 * tr_covmean)
    return max(value, 0.0)


def compute_fvd(features_pred: np.ndarray, features_gt: np.ndarray) -> float:
    """FVD between two sets of clips: Gaussians (mean, covariance with ddof 1) fitted to (N, D) features.

    Raises:
        ValueError: fewer than two clips on a side (no covariance).
    """
    if len(features_pred) < 2 or len(features_gt) < 2:
        raise ValueError("FVD needs at least two clips on each side")
    return frechet_distance(
        features_pred.mean(axis=0),
        np.cov(features_pred, rowvar=False),
        features_gt.mean(axis=0),
        np.cov(features_gt, rowvar=False),
    )


def compute_fvd_consistent4d(features_pred: np.ndarray, features_gt: np.ndarray) -> tuple[float, list[float]]:
    """The Consistent4D script's per-view score (module docstring), and its mean over views.

    Args:
        features_pred: (V, D) one clip per view.
        features_gt: (V, D), row v is the ground truth of prediction row v.

    Returns:
        (mean over views, per-view scores).
    """
    per_view = [
        float(((p - g) ** 2).sum() + (p.std(ddof=1) - g.std(ddof=1)) ** 2)
        for p, g in zip(features_pred, features_gt, strict=True)
    ]
    return float(np.mean(per_view)), per_view
