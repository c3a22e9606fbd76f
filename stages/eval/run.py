"""The eval stage: predicted views × frames against ground-truth views → the paper's metrics and a report (spec §6).

Protocol (Consistent4D scripts, spec §6.2; peers-and-eval §2.2): every image composited on white; CLIP-I,
LPIPS, PSNR and SSIM on both sides resized to `image_size_px` (512); FVD on 224² clips of each view's frames.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import PIL
import torch
from PIL import Image

from stages.common.artifacts import (
    CONFIG_FILE,
    RenderManifest,
    ViewSet,
    git_sha,
    load_any_manifest,
    staged_output_dir,
)
from stages.common.config import config_sha256, dump_config
from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.common.image_io import atomic_write_bytes
from stages.common.logs import progress
from stages.common.lpips import LPIPSVGG
from stages.common.tracking import stage_run
from stages.eval.config import EvalConfig
from stages.eval.manifest import EvalManifest, SkippedMetric, ViewPair, prediction_view_set
from stages.eval.metrics.clip_similarity import ClipImageEncoder, clip_weight_dir, cosine_similarity, load_clip
from stages.eval.metrics.fvd import (
    compute_fvd,
    compute_fvd_consistent4d,
    compute_i3d_features,
    i3d_weight_file,
    load_i3d,
    prepare_clip,
)
from stages.eval.metrics.inception_i3d import InceptionI3d
from stages.eval.metrics.lpips import load_lpips, lpips_weight_files
from stages.eval.metrics.psnr_ssim import compute_psnr, compute_ssim
from stages.eval.metrics.weights import MissingWeights
from stages.eval.pairing import EvalPairs, load_frames, pair_view_sets
from stages.eval.report import METRIC_INFO, ReportView, png_bytes, render_report, view_strip
from stages.eval.report_media import (
    copy_preview,
    load_mvgen_reference,
    loss_curves_svg,
    read_train_log,
    score_reference,
)

__all__ = ["run", "CLIP_METRICS", "FVD_METRICS"]

log = logging.getLogger(__name__)

CLIP_METRICS = ("clip_i", "clip_c", "clip_c_ground_truth")
FVD_METRICS = ("fvd", "fvd_consistent4d")
FEATURES_FILE = "i3d_features.safetensors"
PER_FRAME_COLUMNS = (
    "view",
    "gt_view",
    "azimuth_deg",
    "elevation_deg",
    "frame",
    "gt_frame",
    "source_index",
    "clip_i",
    "clip_c_next",
    "lpips",
    "psnr",
    "psnr_capped",
    "ssim",
)

T = TypeVar("T")


def _load_network(load: Callable[[], T], metrics: tuple[str, ...], skipped: dict[str, SkippedMetric]) -> T | None:
    """Load a metric's network, or record its metrics as skipped when the weights are missing."""
    try:
        return load()
    except MissingWeights as missing:
        log.warning("%s skipped: %s", ", ".join(metrics), missing)
        for metric in metrics:
            skipped[metric] = SkippedMetric(reason=missing.reason, wanted=str(missing.wanted))
        return None


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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _consecutive_similarity(emb: torch.Tensor) -> torch.Tensor:
    """(V, F, D) embeddings → (V, F-1) cosine similarity of frame f and f+1."""
    return cosine_similarity(emb[:, :-1], emb[:, 1:])


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def run(
    config: EvalConfig,
    *,
    prediction_dir: Path,
    ground_truth_dir: Path,
    output_dir: Path,
    weights_dir: Path | None = None,
    metrics_path: Path | None = None,
    mvgen_dir: Path | None = None,
) -> EvalManifest:
    """Score predicted views against ground-truth views; writes metrics.json, per_frame.csv, report.html.

    Args:
        prediction_dir: artifact holding the predicted views × frames (an mvgen output).
        ground_truth_dir: render artifact whose `gt` views are the reference.
        output_dir: artifact folder; replaced as a whole only when the stage succeeds.
        weights_dir: folder with clip/, lpips/ and i3d/ (stages/eval/README.md); a metric whose files are
            missing is recorded as skipped, the others are still computed.
        metrics_path: also write metrics.json here (a DVC metrics file outside the artifact folder).
        mvgen_dir: the mvgen artifact a distill prediction was fitted to: report.html shows its views between the
            ground truth and the prediction, with their PSNR/SSIM (not part of metrics.json).

    Raises:
        StageError: unreadable artifacts, views or frames that cannot be paired, broken weight files.
    """
    prediction_dir, ground_truth_dir, output_dir = Path(prediction_dir), Path(ground_truth_dir), Path(output_dir)
    weights_dir = Path(weights_dir) if weights_dir is not None else None

    # 1. Read both artifacts and pair them (cheap checks first: no MLflow run for a mistyped path).
    prediction = load_any_manifest(prediction_dir)
    pred_views = prediction_view_set(prediction)
    truth = RenderManifest.load(ground_truth_dir)
    if prediction.subject != truth.subject:
        raise StageError(f"prediction is of subject {prediction.subject!r}, ground truth of {truth.subject!r}")
    pairs = pair_view_sets(prediction_dir, pred_views, ground_truth_dir, truth.gt, config.camera_tolerance_deg)
    subject = prediction.subject
    reference = None
    if mvgen_dir is not None:
        reference = load_mvgen_reference(mvgen_dir, prediction, pairs, config.camera_tolerance_deg)
    log.info(
        "%s: %s views × %d frames paired with ground-truth views %s, input frames %s",
        subject,
        [p.view for p, _ in pairs.views],
        len(pairs.frames),
        [g.view for _, g in pairs.views],
        [s for _, _, s in pairs.frames],
    )

    # 2. Networks: a missing weight file skips its metrics; a wrong one is an error.
    device = resolve_device(config.device)
    skipped: dict[str, SkippedMetric] = {}
    clip = _load_network(lambda: load_clip(weights_dir, device), CLIP_METRICS, skipped)
    lpips_net = _load_network(lambda: load_lpips(weights_dir), ("lpips",), skipped)
    i3d = _load_network(lambda: load_i3d(weights_dir), FVD_METRICS, skipped)
    if len(pairs.frames) < 2:
        for metric in ("clip_c", "clip_c_ground_truth"):
            skipped.setdefault(metric, SkippedMetric(reason="needs at least 2 frames", wanted="2 frames"))
    if len(pairs.views) < 2:
        skipped.setdefault("fvd", SkippedMetric(reason="needs at least 2 views (clips) a side", wanted="2 views"))

    tags = {f"skipped.{k}": f"{v.reason}: {v.wanted}" for k, v in skipped.items()}
    with stage_run("eval", config, subject=subject, extra_tags=tags) as tracker:
        result = _evaluate(
            config,
            pairs,
            prediction_dir,
            pred_views,
            ground_truth_dir,
            truth,
            (clip, lpips_net, i3d),
            device,
            skipped,
            reference,
        )
        metrics, rows, features, strips = result

        # 3. Protocol: what the numbers depend on.
        protocol = _protocol(config, pairs, weights_dir, clip, lpips_net, i3d)
        capped = sum(int(r["psnr_capped"]) for r in rows)

        # 4. Write config first, results, report, manifest last; the folder appears only when complete.
        with staged_output_dir(output_dir) as tmp:
            dump_config(config, tmp / CONFIG_FILE)
            files = [CONFIG_FILE]
            metrics_text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
            (tmp / "metrics.json").write_text(metrics_text, encoding="utf-8")
            (tmp / "per_frame.csv").write_text(_per_frame_csv(rows), encoding="utf-8")
            files += ["metrics.json", "per_frame.csv"]
            features_file = None
            if features is not None:
                from safetensors.torch import save_file

                save_file(
                    {"prediction": torch.from_numpy(features[0]), "ground_truth": torch.from_numpy(features[1])},
                    str(tmp / FEATURES_FILE),
                )
                features_file = FEATURES_FILE
                files.append(FEATURES_FILE)
            Image.fromarray(np.concatenate([v.strip for v in strips], axis=0)).save(tmp / "grid.png", format="PNG")
            files.append("grid.png")
            video = copy_preview(prediction_dir, prediction, tmp)
            files += [video] if video else []
            view_pairs = [
                ViewPair(
                    prediction_view=p.view,
                    ground_truth_view=g.view,
                    azimuth_deg=p.azimuth_deg,
                    elevation_deg=p.elevation_deg,
                )
                for p, g in pairs.views
            ]
            report = render_report(
                subject=subject,
                prediction_stage=prediction.stage,
                metrics=metrics,
                skipped=skipped,
                views=[
                    ReportView(title=v.title, metrics=v.metrics, png=png_bytes(v.strip), reference_metrics=v.reference)
                    for v in strips
                ],
                source_indices=[s for _, _, s in pairs.frames],
                protocol=protocol,
                code_version=git_sha(),
                psnr_capped_frames=capped,
                video=video,
                loss_curves=loss_curves_svg(read_train_log(prediction_dir, prediction)),
            )
            (tmp / "report.html").write_text(report, encoding="utf-8")
            files.append("report.html")
            manifest = EvalManifest(
                subject=subject,
                files=files,
                config_sha256=config_sha256(config),
                code_version=git_sha(),
                upstream={
                    prediction.stage: prediction.sha256(prediction_dir),
                    truth.stage: truth.sha256(ground_truth_dir),
                },
                prediction_stage=prediction.stage,
                metrics=metrics,
                skipped=skipped,
                view_pairs=view_pairs,
                source_indices=[s for _, _, s in pairs.frames],
                protocol=protocol,
                psnr_capped_frames=capped,
                features_file=features_file,
            )
            manifest.write(tmp)
        if metrics_path is not None:
            Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(metrics_path), metrics_text.encode("utf-8"))

        tracker.log_metrics(metrics)
        for name in ("report.html", "grid.png", "per_frame.csv", "metrics.json", *([video] if video else [])):
            tracker.log_artifact(output_dir / name)
        tracker.log_manifest(output_dir)
        log.info(
            "%s: %s; skipped %s; report %s",
            subject,
            ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
            sorted(skipped) or "nothing",
            output_dir / "report.html",
        )
        return manifest


def _evaluate(
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
) -> tuple[dict[str, float], list[dict], tuple[np.ndarray, np.ndarray] | None, list[_ViewBlock]]:
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
        strips.append(_ViewBlock(title, summary, strip, {} if ref_metrics is None else ref_metrics[v]))
    ordered = {k: metrics[k] for k in METRIC_INFO if k in metrics}
    return ordered, rows, features, strips


@dataclass(frozen=True)
class _ViewBlock:
    title: str
    metrics: dict[str, float]
    strip: np.ndarray
    reference: dict[str, float]


def _per_frame_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PER_FRAME_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                "" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                for c in PER_FRAME_COLUMNS
            ]
        )
    return buf.getvalue()


def _protocol(
    config: EvalConfig,
    pairs: EvalPairs,
    weights_dir: Path | None,
    clip: ClipImageEncoder | None,
    lpips_net: LPIPSVGG | None,
    i3d: InceptionI3d | None,
) -> dict[str, str | int | float]:
    """Everything the numbers depend on besides the images: sizes, clip length, weights (sha256), versions."""
    num_frames = len(pairs.frames)
    repeats = max(1, -(-config.fvd_min_frames // num_frames))
    protocol: dict[str, str | int | float] = {
        "num_views": len(pairs.views),
        "num_frames": num_frames,
        "unscored_ground_truth_views": ", ".join(
            f"{g.view} (azimuth {g.azimuth_deg:g}°, elevation {g.elevation_deg:g}°)"
            for g in pairs.unpaired_ground_truth
        )
        or "none",
        "background": "white (straight-alpha compositing)",
        "image_size_px": config.image_size_px,
        "resize": "PIL bicubic",
        "fvd_size_px": config.fvd_size_px,
        "fvd_clip_frames": num_frames * repeats,
        "fvd_frame_repeats": repeats,
        "fvd_pooling": "one clip per view; fvd: Gaussians over all clips; fvd_consistent4d: per view, mean",
        "psnr_ssim_data_range": 1.0,
        "ssim_window": f"gaussian {config.ssim_kernel_size} px, sigma {config.ssim_sigma:g}, {config.ssim_padding}",
        "numpy": np.__version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }
    if clip is not None:
        import transformers

        folder = clip_weight_dir(weights_dir)
        files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
        protocol["clip_weights"] = f"clip/{files[0].name} sha256 {_file_sha256(files[0])[:16]}"
        protocol["clip_processor"] = "CLIPImageProcessorPil (shortest side 224 bicubic, centre crop)"
        protocol["transformers"] = transformers.__version__
    if lpips_net is not None:
        backbone, heads = lpips_weight_files(weights_dir)
        protocol["lpips_weights"] = (
            f"{backbone.name} sha256 {_file_sha256(backbone)[:16]}, {heads.name} sha256 {_file_sha256(heads)[:16]}"
        )
    if i3d is not None:
        path = i3d_weight_file(weights_dir)
        protocol["i3d_weights"] = f"{path.name} sha256 {_file_sha256(path)[:16]}"
    return protocol
