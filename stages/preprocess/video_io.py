"""Decode the input: a video file or a folder of PNG/JPG frames → the selected frames as uint8 arrays.

Videos are decoded with PyAV (FFmpeg). The frame count is what actually decodes, not what the container
claims, and a video that decodes fewer frames than its header declares is reported as truncated.

Memory stays bounded whatever the input's resolution: frames are decoded one at a time, and a kept frame whose
longer side exceeds `MAX_DECODE_SIDE_PX` is scaled down as it is converted (FFmpeg's scaler; `INTER_AREA` for
image files), so the kept frames, the matting and the crop work on at most 2048² pixels a frame.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from stages.common.errors import StageError
from stages.common.image_io import read_image

__all__ = [
    "VIDEO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_DECODE_SIDE_PX",
    "SourceInfo",
    "probe_source",
    "read_frames",
    "select_indices",
]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".gif", ".avi", ".mkv", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_DECODE_SIDE_PX = 2048
"""Longer side of the frames `read_frames` returns; larger sources are scaled down while decoding (8× the
production output of 256 px, so the crop still has more pixels than the output)."""


@dataclass(frozen=True)
class SourceInfo:
    """What the input holds."""

    path: Path
    kind: Literal["video", "folder"]
    num_frames: int
    """Frames that decode (T)."""
    fps: float
    """Frame rate (0 when unknown, e.g. a frame folder)."""
    width: int
    height: int
    frame_files: tuple[Path, ...] = ()
    """Frame-folder inputs: the frame files in time order."""

    @property
    def decode_size(self) -> tuple[int, int]:
        """(width, height) of the frames `read_frames` returns: the source's, scaled to fit `MAX_DECODE_SIDE_PX`."""
        scale = min(1.0, MAX_DECODE_SIDE_PX / max(self.width, self.height))
        if scale == 1.0:
            return self.width, self.height
        return max(1, round(self.width * scale)), max(1, round(self.height * scale))


def _natural_key(path: Path) -> list[object]:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def select_indices(num_source: int, num_frames: int, mode: str, *, stride: int = 1, start: int = 0) -> list[int]:
    """Source frame indices to keep.

    Args:
        num_source: frames in the source (T).
        num_frames: frames to keep (n).
        mode: `paper` → `floor(T/n·i)` (official `int(T/8*i)`, exact in integers); `even` →
            `round(i·(T-1)/(n-1))`; `stride` → `start + i·stride`.
        stride: step for `stride`.
        start: first index for `stride`.

    Raises:
        StageError: the source has fewer frames than asked for.
    """
    match mode:
        case "paper" | "even":
            if num_source < num_frames:
                raise StageError(f"input has {num_source} frames, fewer than the {num_frames} asked for")
            if mode == "paper":
                return [num_source * i // num_frames for i in range(num_frames)]
            if num_frames == 1:
                return [0]
            return [
                int((2 * i * (num_source - 1) + (num_frames - 1)) // (2 * (num_frames - 1))) for i in range(num_frames)
            ]
        case "stride":
            last = start + (num_frames - 1) * stride
            if last >= num_source:
                raise StageError(
                    f"input has {num_source} frames; {num_frames} frames at stride {stride} from frame {start} "
                    f"need {last + 1}"
                )
            return [start + i * stride for i in range(num_frames)]
    raise StageError(f"unknown frame_selection {mode!r}; expected paper, even or stride")


def _open_video(path: Path):  # -> av container
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise StageError(f"not a readable video: {path} ({err})") from None
    if not container.streams.video:
        container.close()
        raise StageError(f"no video stream in {path}")
    return container


def _probe_video(path: Path) -> SourceInfo:
    import av

    container = _open_video(path)
    with container:
        stream = container.streams.video[0]
        declared = int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        count, width, height = 0, stream.codec_context.width, stream.codec_context.height
        try:
            for frame in container.decode(stream):
                count += 1
                width, height = frame.width, frame.height
        except av.error.FFmpegError as err:
            raise StageError(
                f"corrupt or truncated video: {path} (decoding stopped after {count} frames: {err})"
            ) from None
    if count == 0:
        raise StageError(f"zero frames decode from {path}")
    if declared > count:
        raise StageError(f"truncated video: {path} declares {declared} frames but only {count} decode")
    return SourceInfo(path=path, kind="video", num_frames=count, fps=fps, width=width, height=height)


def _probe_folder(path: Path, folder_fps: float) -> SourceInfo:
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise StageError(f"zero frames: no {'/'.join(IMAGE_SUFFIXES)} files in folder {path}")
    first = read_image(files[0])
    return SourceInfo(
        path=path,
        kind="folder",
        num_frames=len(files),
        fps=folder_fps,
        width=first.shape[1],
        height=first.shape[0],
        frame_files=tuple(files),
    )


def probe_source(path: Path, *, folder_fps: float = 0.0) -> SourceInfo:
    """Inspect the input and count its frames.

    Raises:
        StageError: missing path, unsupported file type, unreadable/corrupt/truncated video, zero frames.
    """
    path = Path(path)
    if not path.exists():
        raise StageError(f"input not found: {path}")
    if path.is_dir():
        return _probe_folder(path, folder_fps)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise StageError(
            f"unsupported input {path.name!r}: expected a video ({', '.join(VIDEO_SUFFIXES)}) "
            "or a folder of PNG/JPG frames"
        )
    if path.stat().st_size == 0:
        raise StageError(f"not a readable video: {path} is empty")
    return _probe_video(path)


def read_frames(info: SourceInfo, indices: list[int]) -> list[np.ndarray]:
    """Decode the frames at `indices` (ascending) as uint8 (H, W, 3) RGB or (H, W, 4) RGBA arrays.

    A video keeps an alpha channel when its pixel format has one (or a palette, as GIFs do); a folder keeps
    what each image file holds, made uniform (all RGBA if any frame is).

    Raises:
        StageError: a frame fails to decode, or frames differ in size.
    """
    if info.kind == "folder":
        frames, sizes = [], set()
        for i in indices:  # one full-size image at a time
            image = read_image(info.frame_files[i])
            sizes.add(f"{image.shape[1]}x{image.shape[0]}")
            frames.append(_fit(image, info.decode_size))
        if len(sizes) > 1:
            raise StageError(f"frames in {info.path} differ in size: {', '.join(sorted(sizes))}")
        if any(f.shape[2] == 4 for f in frames):
            frames = [f if f.shape[2] == 4 else np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]) for f in frames]
        return frames
    return _read_video_frames(info, indices)


def _read_video_frames(info: SourceInfo, indices: list[int]) -> list[np.ndarray]:
    import av

    wanted = {idx: pos for pos, idx in enumerate(indices)}
    out: list[np.ndarray | None] = [None] * len(indices)
    container = _open_video(info.path)
    with container:
        stream = container.streams.video[0]
        fmt = stream.codec_context.pix_fmt or ""
        keep_alpha = fmt == "pal8" or (fmt and any(c.is_alpha for c in av.VideoFormat(fmt).components))
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    width, height = info.decode_size
                    out[wanted[i]] = frame.to_ndarray(
                        format="rgba" if keep_alpha else "rgb24", width=width, height=height, interpolation="AREA"
                    )
                if i >= indices[-1]:
                    break
        except av.error.FFmpegError as err:
            raise StageError(f"corrupt video: {info.path} ({err})") from None
    if any(f is None for f in out):
        raise StageError(f"video {info.path} changed while reading: frame {indices[out.index(None)]} missing")
    return [f for f in out if f is not None]


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` scaled down to `size` (width, height) when it is larger (one image file at a time)."""
    if image.shape[1] <= size[0] and image.shape[0] <= size[1]:
        return image
    import cv2

    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
