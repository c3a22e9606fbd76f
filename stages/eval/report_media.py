"""What report.html shows besides the scores: the mvgen views a distilled field was fitted to (paired with the
ground truth, with their own PSNR/SSIM), the field's orbit video and its training-loss curves (inline SVG)."""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.common.artifacts import DistillManifest, Manifest, MvgenManifest
from stages.common.cameras import load_cameras
from stages.common.errors import StageError
from stages.eval.pairing import EvalPairs, load_frames, pair_views

__all__ = ["load_mvgen_reference", "score_reference", "copy_preview", "read_train_log", "loss_curves_svg"]

PREVIEW_FILE = "preview.mp4"
"""The orbit video's name beside report.html (a copy of the distill artifact's preview)."""


def load_mvgen_reference(mvgen_dir: Path, prediction: Manifest, pairs: EvalPairs, tolerance_deg: float) -> np.ndarray:
    """The mvgen views a distill prediction was fitted to, in the scored views' order and time order.

    Returns:
        uint8 (V, F, H, W, 3) RGB on white.

    Raises:
        StageError: the prediction is not a distill artifact, was not fitted to this mvgen artifact, or the mvgen
            artifact lacks a scored view or instant.
    """
    mvgen_dir = Path(mvgen_dir)
    mvgen = MvgenManifest.load(mvgen_dir)
    if not isinstance(prediction, DistillManifest):
        raise StageError(f"--mvgen is for a distill prediction; the prediction is a {prediction.stage} artifact")
    if prediction.upstream.get("mvgen") != mvgen.sha256(mvgen_dir):
        raise StageError(f"the prediction was not distilled from {mvgen_dir} (mvgen manifest hash differs)")
    try:
        cameras = load_cameras(mvgen_dir / mvgen.views.cameras_file)
    except (OSError, ValueError) as err:
        raise StageError(f"{mvgen_dir / mvgen.views.cameras_file}: {err}") from None
    by_view = pair_views([p for p, _ in pairs.views], cameras, tolerance_deg)  # (prediction cam, mvgen cam)
    frame_of = {s: f for f, s in enumerate(mvgen.views.source_indices)}
    missing = [s for _, _, s in pairs.frames if s not in frame_of]
    if missing:
        raise StageError(f"{mvgen_dir} has no frames of input frames {missing}")
    frames = [frame_of[s] for _, _, s in pairs.frames]
    return load_frames(mvgen_dir, mvgen.views, [(m.view, frames) for _, m in by_view])


def score_reference(
    reference: np.ndarray, ground_truth: np.ndarray, size_px: int, ssim: Mapping[str, object]
) -> list[dict[str, float]]:
    """Per view, PSNR and SSIM of the mvgen views (V, F, H, W, 3) against the ground truth (V, F, S, S, 3) at the
    protocol's size, as the prediction is scored."""
    from stages.eval.metrics.psnr_ssim import compute_psnr, compute_ssim

    def unit(images: np.ndarray) -> torch.Tensor:  # (F, S, S, 3) uint8 → (F, 3, S, S) in [0, 1]
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0

    out = []
    for frames, truth in zip(reference, ground_truth, strict=True):
        size = (size_px, size_px)
        resized = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames])
        psnr, _ = compute_psnr(unit(resized), unit(truth))
        score = compute_ssim(unit(resized), unit(truth), **ssim)  # type: ignore[arg-type]
        out.append({"psnr": float(psnr.mean()), "ssim": float(score.mean())})
    return out


def copy_preview(prediction_dir: Path, prediction: Manifest, output_dir: Path) -> str | None:
    """Copy a distill prediction's orbit video beside the report; returns its name there, None without one."""
    if not isinstance(prediction, DistillManifest) or prediction.preview_file not in prediction.files:
        return None
    shutil.copyfile(Path(prediction_dir) / prediction.preview_file, Path(output_dir) / PREVIEW_FILE)
    return PREVIEW_FILE


def read_train_log(prediction_dir: Path, prediction: Manifest) -> list[dict[str, float]]:
    """A distill prediction's per-step losses (`train_log.jsonl`); empty for other artifacts or older ones."""
    if not isinstance(prediction, DistillManifest) or prediction.train_log_file not in prediction.files:
        return []
    path = Path(prediction_dir) / prediction.train_log_file
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not a readable training log ({err})") from None


def _series(records: Sequence[Mapping[str, float]]) -> dict[str, list[tuple[float, float]]]:
    """name → (step, value) for the losses and the anchor PSNR, finite values only, in record order."""
    out: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        for key, value in record.items():
            if (key.startswith("loss/") or key.startswith("psnr/")) and math.isfinite(value):
                out.setdefault(key, []).append((float(record["step"]), float(value)))
    return out


def loss_curves_svg(records: Sequence[Mapping[str, float]]) -> list[str]:
    """One small inline SVG chart per logged loss (and the anchor PSNR) over the steps."""
    return [_chart(name, points) for name, points in _series(records).items() if len(points) >= 2]


def _chart(name: str, points: list[tuple[float, float]], width: int = 320, height: int = 140) -> str:
    """A line chart of (step, value); log scale when the values span more than a factor 100 (SDS starts orders of
    magnitude above where it ends)."""
    pad_l, pad_r, pad_t, pad_b = 52, 8, 18, 22
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    log_scale = min(values) > 0 and max(values) / min(values) > 100
    ys = [math.log10(v) for v in values] if log_scale else values
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    xy = [
        (pad_l + (s - x0) / max(x1 - x0, 1e-12) * plot_w, height - pad_b - (y - y0) / (y1 - y0) * plot_h)
        for s, y in zip(steps, ys, strict=True)
    ]
    top, bottom = (f"{10**y:.3g}" if log_scale else f"{y:.3g}" for y in (y1, y0))
    title = html.escape(name + (" (log scale)" if log_scale else ""))
    return (
        f'<svg class="curve" data-series="{html.escape(name)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{pad_l}" y="12" font-size="11">{title}</text>'
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 9}" font-size="10" text-anchor="end">{top}</text>'
        f'<text x="{pad_l - 4}" y="{height - pad_b}" font-size="10" text-anchor="end">{bottom}</text>'
        f'<text x="{pad_l}" y="{height - 6}" font-size="10">step {x0:g}</text>'
        f'<text x="{width - pad_r}" y="{height - 6}" font-size="10" text-anchor="end">{x1:g}</text>'
        '<polyline fill="none" stroke="#1f6fd1" stroke-width="1.5" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        + '"/></svg>'
    )
