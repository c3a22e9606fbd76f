"""Training clips for 4DM from render-stage artifacts (`train/`: a ring of views × all frames, spec §2.7).

A sample is what 4DM is trained on (paper §3.2): F frames at a stride from a random start, a monocular
conditioning video from a random view m of the ring, and 4 orthogonal views b, b + V/4, b + V/2, b + 3V/4 from an
independent random b. Cameras are relative to the conditioning view (our convention: it sits at azimuth 0, as
at inference, where the generated views are at relative azimuths 0/90/180/270).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.common.artifacts import RenderManifest
from stages.common.cameras import fourdm_camera_vectors, load_cameras
from stages.common.errors import StageError
from stages.common.image_io import composite_on_white, read_rgba

__all__ = ["ClipSource", "TrainSample", "find_clip_sources", "sample_clip"]


@dataclass(frozen=True)
class ClipSource:
    """One rendered training ring."""

    directory: Path
    num_views: int
    num_frames: int
    elevation_deg: float
    caption: str

    def frame_path(self, view: int, frame: int) -> Path:
        return self.directory / f"v{view:02d}" / f"rgba_{frame:05d}.png"


@dataclass
class TrainSample:
    """uint8 images on white: `views` (4, F, H, W, 3), `condition` (F, H, W, 3); `cameras` (5, 16) float32."""

    views: np.ndarray
    condition: np.ndarray
    cameras: np.ndarray
    caption: str
    source: str
    view_ids: list[int]
    frame_ids: list[int]


def find_clip_sources(data_dir: Path) -> list[ClipSource]:
    """Every render artifact with training clips under `data_dir` (the artifact itself or its sub-folders).

    Raises:
        StageError: none found.
    """
    data_dir = Path(data_dir)
    candidates = (
        [data_dir]
        if (data_dir / "manifest.json").is_file()
        else sorted(p for p in data_dir.iterdir() if (p / "manifest.json").is_file())
        if data_dir.is_dir()
        else []
    )
    sources = []
    for directory in candidates:
        manifest = RenderManifest.load(directory)
        if manifest.train_dir is None:
            continue
        train = directory / manifest.train_dir
        cameras = load_cameras(train / "cameras.json")
        frames = len(list((train / "v00").glob("rgba_*.png")))
        caption_file = train / "caption.txt"
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else manifest.prompt
        sources.append(ClipSource(train, len(cameras), frames, cameras[0].elevation_deg, caption or ""))
    if not sources:
        raise StageError(
            f"no render artifact with training clips (train/) under {data_dir}; render with --train.enabled"
        )
    return sources


def _load(path: Path, size_px: int) -> np.ndarray:
    rgb = composite_on_white(read_rgba(path))
    if rgb.shape[0] != size_px:
        import cv2  # only to resize (the GPU machine has no OpenCV; renders there match size_px)

        interp = cv2.INTER_AREA if rgb.shape[0] > size_px else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (size_px, size_px), interpolation=interp)
    return rgb


def sample_clip(
    sources: list[ClipSource],
    num_frames: int,
    stride: int,
    size_px: int,
    generator: torch.Generator,
    aligned: bool = False,
) -> TrainSample:
    """Draw one training sample (all randomness from `generator`).

    `aligned`: the 4 views sit at 0/90/180/270° from the conditioning view, as at inference (sample grids).

    Raises:
        StageError: a source is too short for `num_frames` at `stride` (and no shorter stride is allowed).
    """
    source = sources[int(torch.randint(len(sources), (1,), generator=generator))]
    span = (num_frames - 1) * stride + 1
    if source.num_frames < span:
        raise StageError(
            f"{source.directory} has {source.num_frames} frames; {num_frames} at stride {stride} need {span}"
        )
    start = int(torch.randint(source.num_frames - span + 1, (1,), generator=generator))
    frames = [start + i * stride for i in range(num_frames)]
    mono = int(torch.randint(source.num_views, (1,), generator=generator))
    base = int(torch.randint(source.num_views, (1,), generator=generator))
    base = mono if aligned else base
    quarter, step_deg = source.num_views // 4, 360.0 / source.num_views
    views = [(base + k * quarter) % source.num_views for k in range(4)]
    azimuths = [((v - mono) * step_deg) % 360.0 for v in views]  # relative to the conditioning view
    images = np.stack([np.stack([_load(source.frame_path(v, f), size_px) for f in frames]) for v in views])
    condition = np.stack([_load(source.frame_path(mono, f), size_px) for f in frames])
    return TrainSample(
        views=images,
        condition=condition,
        cameras=fourdm_camera_vectors(azimuths, source.elevation_deg),
        caption=source.caption,
        source=str(source.directory),
        view_ids=views,
        frame_ids=frames,
    )
