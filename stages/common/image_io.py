"""Image and video IO shared by the stages: RGBA PNG frames, frame templates, previews, compositing.

Frames on disk are RGBA uint8 PNG, straight (not premultiplied) alpha, sRGB. Videos are previews for people
only; no stage reads them back (house style §8.4).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.errors import StageError

__all__ = [
    "FRAME_TEMPLATE",
    "VIEW_FRAME_TEMPLATE",
    "read_image",
    "read_rgba",
    "write_rgba",
    "composite_on_white",
    "write_preview_video",
    "atomic_write_bytes",
]

FRAME_TEMPLATE = "rgba_{frame:05d}.png"
"""File name of frame `frame` in a frame folder."""
VIEW_FRAME_TEMPLATE = "v{view:02d}/rgba_{frame:05d}.png"
"""Path of frame `frame` of view `view` in a multi-view artifact."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_image(path: Path) -> np.ndarray:
    """Read a PNG/JPG as uint8 (H, W, 3) RGB or (H, W, 4) RGBA, whichever the file holds.

    Greyscale and palette images are expanded (palette transparency becomes an alpha channel); 16-bit images
    are scaled to 8 bits.

    Raises:
        StageError: the file is missing or is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("I;16", "I;16B", "I"):
                arr16 = np.asarray(im, dtype=np.float64)
                grey = np.clip(np.round(arr16 / 257.0), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.asarray(im.convert("RGBA" if has_alpha else "RGB")).copy()
    except (OSError, SyntaxError, ValueError) as err:
        raise StageError(f"not a readable image: {path} ({err})") from None


def read_rgba(path: Path) -> np.ndarray:
    """Read an image as uint8 (H, W, 4) RGBA; images without alpha get an opaque one."""
    img = read_image(path)
    if img.shape[2] == 4:
        return img
    return np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)


def write_rgba(path: Path, rgba: np.ndarray) -> None:
    """Write uint8 (H, W, 4) straight-alpha RGBA as PNG (deterministic bytes for equal pixels)."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected uint8 (H, W, 4), got {rgba.dtype} {rgba.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, mode="RGBA").save(path, format="PNG", compress_level=6)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA uint8 (..., 4) → RGB uint8 over a white background (the paper's protocol)."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.clip(np.round(rgb * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)


def write_preview_video(path: Path, frames_rgb: Sequence[np.ndarray], fps: float) -> None:
    """Encode uint8 (H, W, 3) frames as an H.264 MP4 (yuv420p, browser-playable) with PyAV.

    Odd sizes are padded by one pixel (H.264 4:2:0 needs even sides). Encoding is single-threaded so equal
    frames give equal bytes (constant quantiser 20, no rate control).
    """
    import av

    if not frames_rgb:
        raise ValueError("no frames to encode")
    h, w = frames_rgb[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2
    rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(8)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        # Deterministic bytes: one thread and a constant quantiser. With CRF, x264 rate control gave equal
        # frames different bytes now and then inside our test processes.
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        stream.options = {
            "preset": "medium",
            "x264-params": "threads=1:sliced-threads=0:sync-lookahead=0:qp=20:mbtree=0",
        }
        stream.codec_context.time_base = 1 / rate
        for i, rgb in enumerate(frames_rgb):
            if rgb.shape[:2] != (h, w):
                raise ValueError("all preview frames must have the same size")
            padded = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate  # explicit timestamps: x264's rate control reads them
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
