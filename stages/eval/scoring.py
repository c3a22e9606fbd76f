"""Eval's numbers: paired predicted and ground-truth frames → metrics, per-frame rows and the report's view strips.

Protocol (Consistent4D scripts, spec §6.2): every image composited on white; CLIP-I, LPIPS, PSNR and SSIM on both
sides resized to `image_size_px`; FVD on `fvd_size_px`² clips of each view's frames at their own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.common.artifacts import RenderManifest, ViewSet
from stages.common.logs import progress
from stages.common.lpips import LPIPSVGG
from stages.eval.config import EvalConfig
from stages.eval.manifest import SkippedMetric
from stages.eval.metrics.clip_similarity import ClipImageEncoder, cosine_similarity
from stages.eval.metrics.fvd import compute_fvd, compute_fvd_consistent4d, compute_i3d_features, prepare_clip
from stages.eval.metrics.inception_i3d import InceptionI3d
from stages.eval.metrics.psnr_ssim import compute_psnr, compute_ssim
from stages.eval.pairing import EvalPairs, load_frames
from stages.eval.report import METRIC_INFO, view_strip
from stages.eval.report_media import score_reference

__all__ = ["ViewBlock", "score_pairs"]


@dataclass(frozen=True)
class ViewBlock:
    """One paired view as the report shows it: title, its mean metrics, the image strip, the mvgen reference's."""

    title: str
    metrics: dict[str, float]
    strip: np.ndarray
    reference: dict[str, float]


def score_pairs(
    config: EvalConfig,
    pairs: EvalPairs,
    prediction_dir: Path,
    pred_views: ViewSet,
    ground_truth_dir: Path,
    truth: RenderManifest,
    networks: tuple[ClipImageEncoder | None, LPIPSVGG | None, InceptionI3d | None],
    device: torch.device,
    skipped: dict[str, SkippedMetric],
    reference: np.ndarray | None,
) -> tuple[dict[str, float], list[dict], tuple[np.ndarray, np.ndarray] | None, list[ViewBlock]]:
    """Compute every metric that has its network; returns (metrics, per-frame rows, I3D features, view blocks).

    `networks` is (CLIP, LPIPS, I3D), None where the weights are missing; `reference` the mvgen views (V, F, H, W, 3)
    a distill prediction was fitted to, shown and scored beside it."""
    clip, lpips_net, i3d = networks
    # 1. Images on white, in pair order: (V, F, H, W, 3) each side, then both at the protocol resolution.
    pred_frames = [f for f, _, _ in pairs.frames]
    gt_frames = [g for _, g, _ in pairs.frames]
    pred = load_frames(prediction_dir, pred_views, [(p.view, pred_frames) for p, _ in pairs.views])
    gt = load_frames(ground_truth_dir, truth.gt, [(g.view, gt_frames) for _, g in pairs.views])
    num_views, num_frames = pred.shape[:2]
    pred_s, gt_s = _resize(pred, config.image_size_px), _resize(gt, config.image_size_px)
    flat_pred = pred_s.reshape(-1, *pred_s.shape[2:])  # (V·F, S, S, 3), view-major
    flat_gt = gt_s.reshape(-1, *gt_s.shape[2:])
    per_frame: dict[str, np.ndarray] = {}
    metrics: dict[str, float] = {}

    # 2. PSNR and SSIM: no weights needed.
    psnr, capped = compute_psnr(_to_unit(flat_pred), _to_unit(flat_gt))
    per_frame["psnr"], per_frame["psnr_capped"] = psnr.numpy(), capped.numpy()
    per_frame["ssim"] = np.concatenate(
        [
            compute_ssim(
                _to_unit(flat_pred[i : i + config.batch_size]),
                _to_unit(flat_gt[i : i + config.batch_size]),
                kernel_size=config.ssim_kernel_size,
                sigma=config.ssim_sigma,
                padding=config.ssim_padding,
            ).numpy()
            for i in range(0, len(flat_pred), config.batch_size)
        ]
    )
    metrics["psnr"] = _mean(per_frame["psnr"].tolist())
    metrics["ssim"] = _mean(per_frame["ssim"].tolist())

    # 3. CLIP-I (prediction vs GT) and CLIP-C (consecutive frames of each video).
    if clip is not None:
        emb_pred = clip.embed(flat_pred, config.batch_size).view(num_views, num_frames, -1)  # (V, F, D)
        emb_gt = clip.embed(flat_gt, config.batch_size).view(num_views, num_frames, -1)
        per_frame["clip_i"] = cosine_similarity(emb_pred, emb_gt).reshape(-1).numpy()
        metrics["clip_i"] = float(cosine_similarity(emb_pred, emb_gt).mean(dim=1).mean())
        if num_frames >= 2:
            consecutive = _consecutive_similarity(emb_pred)  # (V, F-1)
            next_sim = np.full((num_views, num_frames), np.nan)
            next_sim[:, :-1] = consecutive.numpy()
            per_frame["clip_c_next"] = next_sim.reshape(-1)
            metrics["clip_c"] = float(consecutive.mean(dim=1).mean())
            metrics["clip_c_ground_truth"] = float(_consecutive_similarity(emb_gt).mean(dim=1).mean())

    # 4. LPIPS (VGG) on [-1, 1].
    if lpips_net is not None:
        lpips_net = lpips_net.to(device)
        with torch.no_grad():
            per_frame["lpips"] = np.concatenate(
                [
                    lpips_net(
                        (_to_unit(flat_pred[i : i + config.batch_size]) * 2 - 1).to(device),
                        (_to_unit(flat_gt[i : i + config.batch_size]) * 2 - 1).to(device),
                    )
                    .double()
                    .cpu()
                    .numpy()
                    for i in progress(range(0, len(flat_pred), config.batch_size), desc="LPIPS", unit="batch")
                ]
            )
        metrics["lpips"] = _mean(per_frame["lpips"].tolist())

    # 5. FVD: one clip per view and side, from the frames at their own resolution.
    features = None
    if i3d is not None:
        clips_pred = [prepare_clip(v, config.fvd_size_px, config.fvd_min_frames) for v in pred]
        clips_gt = [prepare_clip(v, config.fvd_size_px, config.fvd_min_frames) for v in gt]
        features = (compute_i3d_features(i3d, clips_pred, device), compute_i3d_features(i3d, clips_gt, device))
        if "fvd" not in skipped:
            metrics["fvd"] = compute_fvd(*features)
        metrics["fvd_consistent4d"] = compute_fvd_consistent4d(*features)[0]

    # 6. Per-frame rows (view-major, time order) and per-view strips for the report.
    rows = []
    for v, (pcam, gcam) in enumerate(pairs.views):
        for f, (pf, gf, source) in enumerate(pairs.frames):
            i = v * num_frames + f
            row: dict = {
                "view": pcam.view,
                "gt_view": gcam.view,
                "azimuth_deg": pcam.azimuth_deg,
                "elevation_deg": pcam.elevation_deg,
                "frame": pf,
                "gt_frame": gf,
                "source_index": source,
            }
            for key in ("clip_i", "clip_c_next", "lpips", "psnr", "ssim"):
                value = per_frame[key][i] if key in per_frame else None
                row[key] = None if value is None or np.isnan(value) else float(value)
            row["psnr_capped"] = int(per_frame["psnr_capped"][i])
            rows.append(row)
    strips = []
    ssim = {"kernel_size": config.ssim_kernel_size, "sigma": config.ssim_sigma, "padding": config.ssim_padding}
    ref_metrics = score_reference(reference, gt_s, config.image_size_px, ssim) if reference is not None else None
    for v, (pcam, gcam) in enumerate(pairs.views):
        view_rows = rows[v * num_frames : (v + 1) * num_frames]
        summary = {
            key: _mean([r[key] for r in view_rows])
            for key in ("clip_i", "lpips", "psnr", "ssim")
            if view_rows[0][key] is not None
        }
        title = (
            f"view {pcam.view} (azimuth {pcam.azimuth_deg:g}°, elevation {pcam.elevation_deg:g}°) "
            f"↔ ground-truth view {gcam.view}"
        )
        middle = None if reference is None else reference[v]
        strip = view_strip(gt[v], pred[v], config.report_thumb_px, middle)
        strips.append(ViewBlock(title, summary, strip, {} if ref_metrics is None else ref_metrics[v]))
    ordered = {k: metrics[k] for k in METRIC_INFO if k in metrics}
    return ordered, rows, features, strips


def _resize(images: np.ndarray, size_px: int) -> np.ndarray:
    """uint8 (..., H, W, 3) → (..., size_px, size_px, 3) with PIL bicubic, as the reference scripts."""
    flat = images.reshape(-1, *images.shape[-3:])  # (N, H, W, 3)
    if flat.shape[1:3] == (size_px, size_px):
        return images
    out = [np.asarray(Image.fromarray(im).resize((size_px, size_px), Image.Resampling.BICUBIC)) for im in flat]
    return np.stack(out).reshape(*images.shape[:-3], size_px, size_px, 3)


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _consecutive_similarity(emb: torch.Tensor) -> torch.Tensor:
    """(V, F, D) embeddings → (V, F-1) cosine similarity of frame f and f+1."""
    return cosine_similarity(emb[:, :-1], emb[:, 1:])


def _mean(values: list[float]) -> float:
    return float(np.mean(values))
