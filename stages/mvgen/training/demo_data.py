"""Render training rings held in memory for the demo model: one flat image tensor plus index arithmetic.

The demo model trains for minutes, so every image of every ring is decoded once (`load_clip_bank`) and windows
are drawn as index tensors (`sample_windows`); the trainer gathers cached latents and CLIP tokens with them on the
GPU. A window is what `dataset.sample_clip` draws (paper §3.2): F frames at a stride from a random start, a
conditioning view m and 4 orthogonal views b + k·V/4 of an independent b, cameras relative to m. Differences:
the stride is the largest ≤ `max_stride` that fits the clip (clips are rendered with 16 or 24 frames), half the
windows may play backwards, and clips are drawn subject-balanced (a subject = a caption), so the 14 clips of one
asset do not drown the single clip of another.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stages.common.cameras import fourdm_camera_vectors
from stages.common.errors import StageError
from stages.common.image_io import composite_on_white, read_rgba
from stages.mvgen.training.dataset import ClipSource, find_clip_sources

__all__ = ["ClipBank", "Windows", "load_clip_bank", "sample_windows", "clip_stride", "front_view"]


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


def front_view(num_views: int) -> int:
    """The ring view nearest azimuth 0 (the input camera), rings being at −180° + 360°·k / num_views."""
    return min(range(num_views), key=lambda v: abs(((-180.0 + 360.0 * v / num_views) + 180.0) % 360.0 - 180.0))


def clip_stride(num_frames_clip: int, window: int, max_stride: int) -> int:
    """The largest stride ≤ `max_stride` whose window of `window` frames fits a clip of `num_frames_clip` frames."""
    return max(1, min(max_stride, (num_frames_clip - 1) // (window - 1)))


def sample_windows(
    bank: ClipBank,
    batch: int,
    num_frames: int,
    max_stride: int,
    generator: torch.Generator,
    time_reversal: bool = True,
    focus_clip: int | None = None,
    focus_fraction: float = 0.0,
    front_view_only: bool = False,
    any_base: bool = False,
) -> Windows:
    """Draw `batch` windows (all randomness from the CPU `generator`).

    With `focus_clip`, a window is drawn with probability `focus_fraction` from that clip as the demo sees it:
    conditioned on the front view (`front_view`) and asking for the views at 0/90/180/270 from it. With
    `front_view_only`, every window is drawn that way, from whichever clip (the same random draws are made, so the
    clips, frames and time reversal are those of the default). `any_base` (with `front_view_only`): the 4
    orthogonal views start at the ring's random view instead of the front view (focus windows keep the front).
    """
    by_subject = [[c for c, s in enumerate(bank.subjects) if s == k] for k in range(len(bank.subject_captions))]
    views = np.zeros((batch, num_frames, 4), np.int64)
    condition = np.zeros((batch, num_frames), np.int64)
    cameras = np.zeros((batch, 5, 16), np.float32)
    captions = np.zeros(batch, np.int64)
    clips = np.zeros(batch, np.int64)
    for i in range(batch):
        focus = focus_clip is not None and bool(torch.rand(1, generator=generator) < focus_fraction)
        if focus:
            c = focus_clip
        else:
            group = by_subject[int(torch.randint(len(by_subject), (1,), generator=generator))]
            c = group[int(torch.randint(len(group), (1,), generator=generator))]
        n, nv = bank.num_frames[c], bank.num_views[c]
        stride = clip_stride(n, num_frames, max_stride)
        start = int(torch.randint(n - (num_frames - 1) * stride, (1,), generator=generator))
        frames = [start + k * stride for k in range(num_frames)]
        if time_reversal and bool(torch.rand(1, generator=generator) < 0.5):
            frames = frames[::-1]
        mono = int(torch.randint(nv, (1,), generator=generator))
        base = int(torch.randint(nv, (1,), generator=generator))
        if focus or front_view_only:
            mono = front_view(nv)
            if focus or not any_base:
                base = mono
        ring = [(base + k * (nv // 4)) % nv for k in range(4)]
        views[i] = [[bank.index(c, v, f) for v in ring] for f in frames]
        condition[i] = [bank.index(c, mono, f) for f in frames]
        cameras[i] = fourdm_camera_vectors([((v - mono) * 360.0 / nv) % 360.0 for v in ring], bank.elevations[c])
        captions[i], clips[i] = bank.subjects[c], c
    return Windows(
        views=torch.from_numpy(views),
        condition=torch.from_numpy(condition),
        cameras=torch.from_numpy(cameras),
        captions=torch.from_numpy(captions),
        clips=torch.from_numpy(clips),
    )
