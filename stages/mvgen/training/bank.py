"""Training rings held in memory (`data.in_memory`): one flat image tensor plus index arithmetic.

Every image of every ring is decoded once (`load_clip_bank`) and windows (`windows.draw_window`, the same draws as
from disk) become index tensors (`sample_windows`); the trainer gathers cached latents and CLIP tokens with them on
the device.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stages.common.cameras import fourdm_camera_vectors
from stages.common.errors import StageError
from stages.common.image_io import composite_on_white, read_rgba
from stages.mvgen.training.dataset import ClipSource, find_clip_sources
from stages.mvgen.training.windows import ClipTable, WindowSpec, draw_window

__all__ = ["ClipBank", "Windows", "load_clip_bank", "sample_windows"]


@dataclass
class ClipBank:
    """Every training image, flat: image i of clip c, view v, frame f is `offsets[c] + v·num_frames[c] + f`.

    Attributes:
        rgb: (M, H, W, 3) uint8 composited on white.
        alpha: (M, H, W) uint8.
        names, captions, num_views, num_frames, elevations, offsets: per clip.
        subjects: per clip, the index of its caption in `subject_captions` (the sampling groups).
    """

    rgb: np.ndarray
    alpha: np.ndarray
    names: list[str]
    captions: list[str]
    num_views: list[int]
    num_frames: list[int]
    elevations: list[float]
    offsets: list[int]
    subjects: list[int]
    subject_captions: list[str]

    def index(self, clip: int, view: int, frame: int) -> int:
        return self.offsets[clip] + view * self.num_frames[clip] + frame

    @cached_property
    def table(self) -> ClipTable:
        """The sampler's view of the clips (`windows.ClipTable`)."""
        return ClipTable(self.num_frames, self.num_views, self.subjects, self.names)


@dataclass
class Windows:
    """A batch of B training windows as indices into a `ClipBank`.

    Attributes:
        views: (B, F, 4) image indices of the 4 generated views per frame.
        condition: (B, F) image indices of the conditioning video.
        cameras: (B, 5, 16) float32 camera vectors (4 views relative to the conditioning view + the reference slot).
        captions: (B,) caption (subject) index into `ClipBank.subject_captions`.
        clips: (B,) clip index.
    """

    views: Tensor
    condition: Tensor
    cameras: Tensor
    captions: Tensor
    clips: Tensor


def _read(path: Path, size_px: int) -> np.ndarray:
    rgba = read_rgba(path)
    if rgba.shape[0] != size_px:
        import cv2  # only to resize (the GPU machine has no OpenCV; renders there match size_px)

        interp = cv2.INTER_AREA if rgba.shape[0] > size_px else cv2.INTER_LINEAR
        rgba = cv2.resize(rgba, (size_px, size_px), interpolation=interp)
    return rgba


def load_clip_bank(data_dir: Path, size_px: int, min_frames: int, threads: int = 8) -> ClipBank:
    """Decode every training ring under `data_dir` (a render artifact or a folder of them).

    Args:
        data_dir: as `find_clip_sources`.
        size_px: image side to hold (renders of another size are resized).
        min_frames: frames a clip needs (the window length at stride 1).
        threads: decoding threads.

    Raises:
        StageError: no training rings, a ring whose view count is not a multiple of 4, or a clip too short.
    """
    sources: list[ClipSource] = find_clip_sources(Path(data_dir))
    for s in sources:
        if s.num_views % 4:
            raise StageError(f"{s.directory}: {s.num_views} views, not a multiple of 4 (orthogonal views)")
        if s.num_frames < min_frames:
            raise StageError(f"{s.directory}: {s.num_frames} frames; a training window needs {min_frames}")
    paths = [s.frame_path(v, f) for s in sources for v in range(s.num_views) for f in range(s.num_frames)]
    with ThreadPoolExecutor(threads) as pool:
        rgba = np.stack(list(pool.map(lambda p: _read(p, size_px), paths)))  # (M, H, W, 4)
    offsets = np.cumsum([0] + [s.num_views * s.num_frames for s in sources[:-1]]).tolist()
    subject_captions = sorted({s.caption for s in sources})
    return ClipBank(
        rgb=composite_on_white(rgba),
        alpha=rgba[..., 3].copy(),
        names=[s.directory.parent.name for s in sources],
        captions=[s.caption for s in sources],
        num_views=[s.num_views for s in sources],
        num_frames=[s.num_frames for s in sources],
        elevations=[s.elevation_deg for s in sources],
        offsets=[int(o) for o in offsets],
        subjects=[subject_captions.index(s.caption) for s in sources],
        subject_captions=subject_captions,
    )


def sample_windows(bank: ClipBank, batch: int, spec: WindowSpec, generator: torch.Generator) -> Windows:
    """Draw `batch` windows (`windows.draw_window`, all randomness from the CPU `generator`) as image indices."""
    table = bank.table
    views = np.zeros((batch, spec.num_frames, 4), np.int64)
    condition = np.zeros((batch, spec.num_frames), np.int64)
    cameras = np.zeros((batch, 5, 16), np.float32)
    captions = np.zeros(batch, np.int64)
    clips = np.zeros(batch, np.int64)
    for i in range(batch):
        w = draw_window(table, spec, generator)
        c = w.clip
        views[i] = [[bank.index(c, v, f) for v in w.ring] for f in w.frames]
        condition[i] = [bank.index(c, w.mono, f) for f in w.frames]
        cameras[i] = fourdm_camera_vectors(w.azimuths, bank.elevations[c])
        captions[i], clips[i] = bank.subjects[c], c
    return Windows(
        views=torch.from_numpy(views),
        condition=torch.from_numpy(condition),
        cameras=torch.from_numpy(cameras),
        captions=torch.from_numpy(captions),
        clips=torch.from_numpy(clips),
    )
