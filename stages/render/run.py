"""The render stage: an animated 3D asset → monocular input frames, ground-truth views, training clips (spec §2.7).

One asset gives one artifact (`RenderManifest`). A folder of assets gives one artifact per asset under
`<output>/<subject>/` and a `batch.json` summary; a failing asset is logged and the batch goes on.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.common.artifacts import CONFIG_FILE, RenderManifest, ViewSet, git_sha, staged_output_dir
from stages.common.cameras import OrbitCamera, save_cameras
from stages.common.config import config_sha256, dump_config
from stages.common.errors import StageError
from stages.common.image_io import (
    FRAME_TEMPLATE,
    atomic_write_bytes,
    composite_on_white,
    write_preview_video,
    write_rgba,
)
from stages.common.logs import progress
from stages.common.tracking import stage_run
from stages.render.config import RenderConfig
from stages.render.framing import FORWARD_YAW_DEG, frame_times, framing_radius, normalisation_matrix
from stages.render.metrics import compute_clip_metrics, curation_failures

__all__ = ["run", "render_asset", "RenderInfo", "BatchEntry", "BatchSummary", "CurationRejected"]

log = logging.getLogger(__name__)

_SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUPPORTED_SUFFIXES = (".glb", ".gltf", ".fbx", ".obj")
INPUT_DIR = "input"
GT_TEMPLATE = "gt/v{view:02d}/rgba_{frame:05d}.png"
GT_CAMERAS = "gt/cameras.json"
TRAIN_DIR = "train"
TRAIN_TEMPLATE = "train/v{view:02d}/rgba_{frame:05d}.png"
RENDER_INFO = "render_info.json"
PREVIEW = "preview.mp4"
BATCH_SUMMARY = "batch.json"


class CurationRejected(StageError):
    """The clip rendered but fails the curation thresholds (`curation.curate`)."""


class RenderInfo(BaseModel):
    """`render_info.json`: how the asset became the images (provenance and the exact world transform)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: str
    """File name of the asset."""
    asset_sha256: str
    clip: str | None
    """Clip rendered (None: static asset)."""
    clips: list[str]
    """Every clip the asset holds."""
    clip_duration_s: float
    frame_times_s: list[float]
    """Clip time of each rendered frame, seconds."""
    asset_to_world: list[list[float]]
    """4×4 row-major map from Blender's imported (z-up) world into ours: scale · translate · turn about z."""
    yaw_deg: float
    centre: list[float]
    """Centre of the clip-wide bounding box after the turn, before scaling (imported units)."""
    scale: float
    bbox_size: list[float]
    """Clip-wide bounding-box size after the turn, before scaling (imported units)."""
    blender_version: str
    train_cameras_file: str | None = None
    """`train/cameras.json` when training clips were rendered (frames `train/v{view:02d}/rgba_{frame:05d}.png`,
    caption `train/caption.txt`)."""


class BatchEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    asset: str
    subject: str
    status: Literal["rendered", "rejected", "failed"]
    """`rejected`: failed curation; `failed`: bad input (`reason` says why)."""
    reason: str | None = None
    clip_metrics: dict[str, float] = {}


class BatchSummary(BaseModel):
    """`<output>/batch.json`, written after every asset of a folder input was tried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entries: list[BatchEntry]

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.entries)


def _subject_name(path: Path, subject: str | None) -> str:
    if subject is not None:
        if not _SUBJECT_RE.match(subject):
            raise StageError(f"subject {subject!r} must match {_SUBJECT_RE.pattern} (it names folders and runs)")
        return subject
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "subject"
    return name if _SUBJECT_RE.match(name) else f"s-{name}"


def _resolve_prompt(config: RenderConfig, asset: Path) -> str:
    """Config value, else `<asset stem>.txt` beside the asset, else the asset's name in words ("Fox" → "fox")."""
    if config.prompt is not None and config.prompt.strip():
        return config.prompt.strip()
    beside = asset.with_suffix(".txt")
    if beside.is_file() and beside.read_text(encoding="utf-8").strip():
        return beside.read_text(encoding="utf-8").strip()
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", asset.stem)
    return " ".join(re.split(r"[^A-Za-z0-9]+", words)).strip().lower() or asset.stem


def _check_asset(asset: Path) -> None:
    if not asset.exists():
        raise StageError(f"asset not found: {asset}")
    if not asset.is_file():
        raise StageError(f"asset is not a file: {asset}")
    if asset.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise StageError(f"unsupported asset format {asset.suffix or '(none)'!r}: {asset} (use {SUPPORTED_SUFFIXES})")


def _cameras(config: RenderConfig, azimuths: list[float], elevation_deg: float) -> list[OrbitCamera]:
    cam = config.camera
    return [OrbitCamera.from_angles(v, a, elevation_deg, cam.radius, cam.fov_y_deg) for v, a in enumerate(azimuths)]


def render_asset(config: RenderConfig, *, asset: Path, output_dir: Path, subject: str | None = None) -> RenderManifest:
    """Render one asset into one artifact (see `run`)."""
    asset, output_dir = Path(asset), Path(output_dir)
    _check_asset(asset)
    subject = _subject_name(asset, subject)
    from stages.render.scene import BlenderScene, blender_version  # bpy: only here, so configs load without it

    # 1. Import, pick the clip, and the times to render (bad input fails here, before any MLflow run).
    scene = BlenderScene(asset)
    try:
        clip = scene.use_clip(config.clip)
        static = clip.name is None
        if static and not config.allow_static:
            raise StageError(f"{asset} has no animation (set allow_static to render it as a static clip)")
        if static:
            log.warning("%s has no animation: rendering %d copies of its pose", asset.name, max(config.num_frames, 1))
        times = frame_times(clip.duration_s, config.fps, config.num_frames, config.start_s, static=static)
        log.info(
            "%s: clips %s; rendering %r (%.3f s) at %d frames, %g fps", subject, scene.clips, clip.name,
            clip.duration_s, len(times), config.fps,
        )  # fmt: skip
        prompt = _resolve_prompt(config, asset)

        # 2. Normalise: clip-wide bounding box (every Blender frame of the clip and every rendered time) → origin,
        #    circumscribed sphere → the framing radius; the asset's forward axis → +x (azimuth 0).
        probe = sorted({*np.arange(np.ceil(clip.first_frame), clip.last_frame + 1e-9).tolist(), clip.last_frame})
        probe_times = [(f - clip.first_frame) / clip.frames_per_s for f in probe] + times
        points, diagonals = [], []
        for t in probe_times if not static else [0.0]:
            scene.set_time(clip, t)
            p = scene.world_points()
            points.append(p)
            diagonals.append(float(np.linalg.norm(p.max(0) - p.min(0))) if len(p) else 0.0)
        all_points = np.concatenate(points)
        radius = framing_radius(config.camera.radius, config.camera.fov_y_deg, config.fill_frac)
        matrix, norm = normalisation_matrix(all_points, FORWARD_YAW_DEG[config.forward_axis], radius)
        travel_ratio = float(np.linalg.norm(np.ptp(all_points, axis=0)) / max(np.mean(diagonals), 1e-12))
        scene.set_world_transform(matrix)
        scene.setup_render(
            engine=config.engine, samples=config.samples, size_px=config.size_px,
            fov_y_deg=config.camera.fov_y_deg, lighting=config.lighting, seed=config.seed,
        )  # fmt: skip

        elevation = config.camera.elevation_deg
        input_camera = _cameras(config, [config.input_azimuth_deg], elevation)[0]
        gt_cameras = _cameras(config, list(config.gt_azimuths_deg), elevation)

        with stage_run("render", config, subject=subject, extra_tags={"asset": asset.name}) as tracker:
            # 3. Input and ground-truth views, kept in memory until curation has had its say.
            inputs, gt = [], [[] for _ in gt_cameras]  # inputs: F × (H, W, 4); gt: V × F × (H, W, 4)
            for t in progress(times, desc=f"render {subject}"):
                scene.set_time(clip, t)
                inputs.append(scene.render(input_camera.c2w_array()))
                for v, cam in enumerate(gt_cameras):
                    gt[v].append(scene.render(cam.c2w_array()))
            gt_array = np.stack([np.stack(frames) for frames in gt])  # (V, F, H, W, 4)

            # 4. Curation metrics on the 4 orthogonal GT views; reject before writing anything.
            metrics = compute_clip_metrics(gt_array[:4], travel_ratio)
            log.info("%s: %s", subject, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            tracker.log_metrics(metrics)
            failures = curation_failures(metrics, config.curation)
            if failures and config.curation.curate:
                raise CurationRejected(f"{subject} rejected by curation: {'; '.join(failures)}")
            for reason in failures:
                log.warning("%s would fail curation: %s", subject, reason)

            # 5. Write: config first, frames, cameras, training clips, info, preview, manifest last.
            with staged_output_dir(output_dir) as tmp:
                dump_config(config, tmp / CONFIG_FILE)
                files = [CONFIG_FILE]
                for f, rgba in enumerate(inputs):
                    rel = f"{INPUT_DIR}/{FRAME_TEMPLATE.format(frame=f)}"
                    write_rgba(tmp / rel, rgba)
                    files.append(rel)
                (tmp / INPUT_DIR / "prompt.txt").write_text(prompt + "\n", encoding="utf-8")
                files.append(f"{INPUT_DIR}/prompt.txt")
                for v in range(len(gt_cameras)):
                    for f in range(len(times)):
                        write_rgba(tmp / GT_TEMPLATE.format(view=v, frame=f), gt_array[v, f])
                save_cameras(tmp / GT_CAMERAS, gt_cameras)
                gt_set = ViewSet(
                    num_views=len(gt_cameras), num_frames=len(times), size_px=config.size_px,
                    frame_template=GT_TEMPLATE, cameras_file=GT_CAMERAS, source_indices=list(range(len(times))),
                )  # fmt: skip
                files += gt_set.file_list()

                train_cameras_file = None
                if config.train.enabled:
                    n = config.train.num_views
                    train_cameras = _cameras(config, [-180.0 + 360.0 * k / n for k in range(n)], 0.0)
                    for f, t in enumerate(progress(times, desc=f"train clips {subject}")):
                        scene.set_time(clip, t)
                        for v, cam in enumerate(train_cameras):
                            write_rgba(tmp / TRAIN_TEMPLATE.format(view=v, frame=f), scene.render(cam.c2w_array()))
                            files.append(TRAIN_TEMPLATE.format(view=v, frame=f))
                    train_cameras_file = f"{TRAIN_DIR}/cameras.json"
                    save_cameras(tmp / train_cameras_file, train_cameras)
                    (tmp / TRAIN_DIR / "caption.txt").write_text(prompt + "\n", encoding="utf-8")
                    files += [train_cameras_file, f"{TRAIN_DIR}/caption.txt"]

                info = RenderInfo(
                    asset=asset.name, asset_sha256=hashlib.sha256(asset.read_bytes()).hexdigest(),
                    clip=clip.name, clips=scene.clips, clip_duration_s=clip.duration_s, frame_times_s=times,
                    asset_to_world=matrix.tolist(), yaw_deg=norm["yaw_deg"], centre=norm["centre"],
                    scale=norm["scale"], bbox_size=norm["bbox_size"], blender_version=blender_version(),
                    train_cameras_file=train_cameras_file,
                )  # fmt: skip
                (tmp / RENDER_INFO).write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
                files.append(RENDER_INFO)
                tiles = [np.concatenate([inputs[f], *gt_array[:4, f]], axis=1) for f in range(len(times))]
                write_preview_video(tmp / PREVIEW, [composite_on_white(t) for t in tiles], config.fps)
                files.append(PREVIEW)

                manifest = RenderManifest(
                    subject=subject, files=files, config_sha256=config_sha256(config), code_version=git_sha(),
                    input_dir=INPUT_DIR, input_camera=input_camera.model_dump(), gt=gt_set, fps=config.fps,
                    prompt=prompt, train_dir=TRAIN_DIR if config.train.enabled else None, clip_metrics=metrics,
                )  # fmt: skip
                manifest.write(tmp)
            tracker.log_manifest(output_dir)
            tracker.log_artifact(output_dir / PREVIEW)
    finally:
        scene.close()
    log.info("wrote %s: %d frames × (1 input + %d GT views)", output_dir, len(times), len(gt_cameras))
    return manifest


def _run_batch(config: RenderConfig, *, input_dir: Path, output_dir: Path) -> BatchSummary:
    assets = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not assets:
        raise StageError(f"{input_dir} holds no asset ({', '.join(SUPPORTED_SUFFIXES)})")
    entries: list[BatchEntry] = []
    seen: set[str] = set()
    for asset in progress(assets, desc="assets"):
        subject = _subject_name(asset, None)
        if subject.lower() in seen:
            entries.append(BatchEntry(asset=asset.name, subject=subject, status="failed", reason="duplicate subject"))
            log.error("%s: another asset already gave subject %r; skipped", asset.name, subject)
            continue
        seen.add(subject.lower())
        try:
            m = render_asset(config, asset=asset, output_dir=output_dir / subject, subject=subject)
            entries.append(
                BatchEntry(asset=asset.name, subject=subject, status="rendered", clip_metrics=m.clip_metrics)
            )
        except CurationRejected as err:
            log.warning("%s", err)
            entries.append(BatchEntry(asset=asset.name, subject=subject, status="rejected", reason=str(err)))
        except StageError as err:
            log.error("%s failed: %s", asset.name, err)
            entries.append(BatchEntry(asset=asset.name, subject=subject, status="failed", reason=str(err)))
    summary = BatchSummary(entries=entries)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output_dir / BATCH_SUMMARY, (summary.model_dump_json(indent=2) + "\n").encode())
    counts = {s: summary.count(s) for s in ("rendered", "rejected", "failed")}
    log.info("batch %s: %s (summary in %s)", input_dir, counts, output_dir / BATCH_SUMMARY)
    if counts["failed"]:
        failed = [e.asset for e in entries if e.status == "failed"]
        raise StageError(
            f"{counts['failed']} of {len(entries)} assets failed ({', '.join(failed)}); see {BATCH_SUMMARY}"
        )
    return summary


def run(
    config: RenderConfig, *, input_path: Path, output_dir: Path, subject: str | None = None
) -> RenderManifest | BatchSummary:
    """Render an animated asset into input frames, ground-truth views and optional training clips.

    Args:
        input_path: asset file (.glb .gltf .fbx .obj), or a folder of them (one subject per asset, named after
            the file; artifacts go to `<output>/<subject>/`, a summary to `<output>/batch.json`).
        output_dir: artifact folder; replaced as a whole only when the stage succeeds.
        subject: subject name for the manifest and MLflow (default: the asset's file name); single assets only.

    Raises:
        StageError: bad input (missing, unsupported, not importable, no animation, zero frames), a clip rejected
            by curation, or, for a folder, any asset that failed (after trying all of them).
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    if input_path.is_dir():
        if subject is not None:
            raise StageError("--subject names one asset; a folder input names each subject after its file")
        return _run_batch(config, input_dir=input_path, output_dir=output_dir)
    return render_asset(config, asset=input_path, output_dir=output_dir, subject=subject)
