"""The eval stage: predicted views × frames against ground-truth views → the paper's metrics and a report (spec §6).

Protocol (Consistent4D scripts, spec §6.2; peers-and-eval §2.2): every image composited on white; CLIP-I,
LPIPS, PSNR and SSIM on both sides resized to `image_size_px` (512); FVD on 224² clips of each view's frames.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from stages.common.artifacts import CONFIG_FILE, RenderManifest, git_sha, load_any_manifest, staged_output_dir
from stages.common.config import config_sha256, dump_config
from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.common.image_io import atomic_write_bytes
from stages.common.tracking import stage_run
from stages.eval.config import EvalConfig
from stages.eval.manifest import EvalManifest, SkippedMetric, ViewPair, prediction_view_set
from stages.eval.metrics.clip_similarity import load_clip
from stages.eval.metrics.fvd import load_i3d
from stages.eval.metrics.lpips import load_lpips
from stages.eval.metrics.weights import MissingWeights
from stages.eval.pairing import pair_view_sets
from stages.eval.protocol import build_protocol
from stages.eval.report import ReportView, png_bytes, render_report
from stages.eval.report_media import copy_preview, load_mvgen_reference, loss_curves_svg, read_train_log
from stages.eval.scoring import score_pairs

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
        result = score_pairs(
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
        protocol = build_protocol(config, pairs, weights_dir, clip, lpips_net, i3d)
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
