"""Training windows read from disk: render-stage artifacts (`train/`: a ring of views × all frames, spec §2.7).

`find_clip_sources` finds the rings, `windows.draw_window` draws a window (paper §3.2), `read_window` reads its
images (composited on white, resized to `size_px`) and cameras relative to the conditioning view.
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
from stages.mvgen.training.windows import ClipTable, Window, WindowSpec, draw_window

__all__ = ["ClipSource", "TrainSample", "clip_table", "find_clip_sources", "read_window", "sample_clip"]


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


def clip_table(sources: list[ClipSource]) -> ClipTable:
    """The sampler's view of `sources` (subjects: captions in sorted order; names: the render artifacts')."""
    captions = sorted({s.caption for s in sources})
    return ClipTable(
        num_frames=[s.num_frames for s in sources],
        num_views=[s.num_views for s in sources],
        subjects=[captions.index(s.caption) for s in sources],
        names=[s.directory.parent.name for s in sources],
    )


def read_window(sources: list[ClipSource], window: Window, size_px: int) -> TrainSample:
    """The images and cameras of `window` read from disk."""
    source = sources[window.clip]
    images = np.stack(
        [np.stack([_load(source.frame_path(v, f), size_px) for f in window.frames]) for v in window.ring]
    )
    condition = np.stack([_load(source.frame_path(window.mono, f), size_px) for f in window.frames])
    return TrainSample(
        views=images,
        condition=condition,
        cameras=fourdm_camera_vectors(window.azimuths, source.elevation_deg),
        caption=source.caption,
        source=str(source.directory),
        view_ids=list(window.ring),
        frame_ids=list(window.frames),
    )


def sample_clip(
    sources: list[ClipSource],
    num_frames: int,
    stride: int,
    size_px: int,
    generator: torch.Generator,
    aligned: bool = False,
) -> TrainSample:
    """Draw one window of the paper's kind (any clip, exact `stride`, random views) and read it (`draw_window`).

    `aligned`: the 4 views sit at 0/90/180/270° from the conditioning view, as at inference (sample grids).

    Raises:
        StageError: a source is too short for `num_frames` at `stride`.
    """
    window = draw_window(clip_table(sources), WindowSpec(num_frames, stride), generator, aligned)
    return read_window(sources, window, size_px)
