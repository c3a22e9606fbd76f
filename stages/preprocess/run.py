"""The preprocess stage: a monocular video → `num_frames` square RGBA frames, matted and recentred (spec §1.2)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from stages.common.artifacts import CONFIG_FILE, PreprocessManifest, git_sha, staged_output_dir
from stages.common.config import config_sha256, dump_config
from stages.common.errors import StageError
from stages.common.image_io import composite_on_white, write_preview_video, write_rgba
from stages.common.seeding import seed_everything
from stages.common.tracking import stage_run
from stages.preprocess.config import PreprocessConfig
from stages.preprocess.matting import matte_frames
from stages.preprocess.recenter import crop_and_resize, square_crop_box, union_box
from stages.preprocess.video_io import probe_source, read_frames, select_indices

__all__ = ["run"]

log = logging.getLogger(__name__)

_SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PREVIEW_FPS_UNKNOWN = 8.0


def _subject_name(input_path: Path, subject: str | None) -> str:
    if subject is not None:
        if not _SUBJECT_RE.match(subject):
            raise StageError(f"subject {subject!r} must match {_SUBJECT_RE.pattern} (it names folders and runs)")
        return subject
    stem = input_path.name if input_path.is_dir() else input_path.stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "subject"
    return name if _SUBJECT_RE.match(name) else f"s-{name}"


def _in_source_pixels(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    """A box of the decoded frames (scaled down from large sources, `video_io.MAX_DECODE_SIDE_PX`) in source pixels."""
    if scale == 1.0:
        return box
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    return x0, y0, x1, y1


def _resolve_prompt(config: PreprocessConfig, input_path: Path) -> str | None:
    """Config value first, then `<stem>.txt` / `prompt.txt` beside the video, or `prompt.txt` in a folder."""
    if config.prompt is not None:
        return config.prompt.strip() or None
    candidates = (
        [input_path / "prompt.txt"]
        if input_path.is_dir()
        else [input_path.with_suffix(".txt"), input_path.parent / "prompt.txt"]
    )
    for path in candidates:
        if path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            log.info("prompt from %s: %r", path, text)
            return text or None
    return None


def run(
    config: PreprocessConfig,
    *,
    input_path: Path,
    output_dir: Path,
    subject: str | None = None,
    weights_dir: Path | None = None,
) -> PreprocessManifest:
    """Turn a video or a folder of frames into square RGBA frames; writes manifest.json last.

    Args:
        input_path: video file (.mp4 .webm .mov .gif .avi .mkv .m4v) or folder of PNG/JPG frames.
        output_dir: artifact folder; replaced as a whole only when the stage succeeds.
        subject: subject name for manifests and MLflow (default: the input's file or folder name).
        weights_dir: folder with the rembg ONNX model, for matting.backend=rembg (default weights/rembg).

    Raises:
        StageError: bad input (missing, not a video, corrupt, too few frames, empty foreground) or output.
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    subject = _subject_name(input_path, subject)
    seed_everything(config.seed)

    # 1. Probe the input and pick frames (cheap checks first: no MLflow run for a mistyped path).
    info = probe_source(input_path, folder_fps=config.folder_fps)
    indices = select_indices(
        info.num_frames, config.num_frames, config.frame_selection, stride=config.stride, start=config.start_frame
    )
    log.info(
        "%s: %s, %d frames %dx%d at %.3g fps; keeping %s",
        subject,
        info.kind,
        info.num_frames,
        info.width,
        info.height,
        info.fps,
        indices,
    )
    prompt = _resolve_prompt(config, input_path)

    with stage_run("preprocess", config, subject=subject) as tracker:
        frames = read_frames(info, indices)

        # 2. Foreground alpha: the input's own when it has a real one, else a matting backend.
        has_alpha = frames[0].shape[2] == 4 and any(bool((f[..., 3] < 255).any()) for f in frames)
        if config.use_input_alpha and has_alpha:
            alpha_source = "input"
            alphas = [f[..., 3].astype(np.float32) / 255.0 for f in frames]
        else:
            alpha_source = config.matting.backend
            rgbs = [np.ascontiguousarray(f[..., :3]) for f in frames]
            alphas = matte_frames(rgbs, config.matting, seed=config.seed, weights_dir=weights_dir)
        log.info("alpha from %s", alpha_source)

        # 3. One square crop box for the whole clip, then resize every frame into it.
        box = union_box(alphas, config.mask_threshold)  # also the empty-foreground check
        if config.framing == "recenter":
            crop = square_crop_box(box, config.margin_frac)
        else:
            crop = square_crop_box((0, 0, frames[0].shape[1], frames[0].shape[0]), 0.0)
        outputs = []
        for frame, alpha in zip(frames, alphas, strict=True):
            rgba = np.dstack([frame[..., :3], np.round(alpha * 255.0).astype(np.uint8)])
            outputs.append(crop_and_resize(rgba, crop, config.size_px))
        log.info("crop box %s → %d px", crop, config.size_px)

        # 4. Write config first, frames and preview, manifest last; the folder appears only when complete.
        step = (indices[-1] - indices[0]) / (len(indices) - 1) if len(indices) > 1 else 1.0
        fps = info.fps / step if info.fps > 0 else 0.0
        template = PreprocessManifest.model_fields["frame_template"].default
        preview = PreprocessManifest.model_fields["preview_file"].default
        with staged_output_dir(output_dir) as tmp:
            dump_config(config, tmp / CONFIG_FILE)
            files = [CONFIG_FILE]
            for i, rgba in enumerate(outputs):
                write_rgba(tmp / template.format(frame=i), rgba)
                files.append(template.format(frame=i))
            write_preview_video(tmp / preview, [composite_on_white(o) for o in outputs], fps or _PREVIEW_FPS_UNKNOWN)
            files.append(preview)
            manifest = PreprocessManifest(
                subject=subject,
                files=files,
                config_sha256=config_sha256(config),
                code_version=git_sha(),
                num_frames=len(outputs),
                size_px=config.size_px,
                fps=fps,
                source_fps=info.fps,
                source_num_frames=info.num_frames,
                source_indices=indices,
                source_size=(info.width, info.height),
                crop_box=_in_source_pixels(crop, info.width / frames[0].shape[1]),
                alpha_source=alpha_source,
                prompt=prompt,
            )
            manifest.write(tmp)

        coverage = float(np.mean([o[..., 3].mean() / 255.0 for o in outputs]))
        tracker.log_metrics({"foreground_coverage": coverage, "num_frames": len(outputs)})
        tracker.log_manifest(output_dir)
        tracker.log_artifact(output_dir / preview)
        log.info(
            "wrote %d frames to %s (foreground covers %.1f%% of the frame)", len(outputs), output_dir, 100 * coverage
        )
        return manifest
