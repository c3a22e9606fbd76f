"""Synthetic inputs with known answers: a disc of known position on a plain background, as video or frames."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BACKGROUND = (90, 110, 140)
FOREGROUND = (235, 120, 40)


def disc_alpha(width: int, height: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """Binary float32 (H, W) mask of a disc (pixel centres inside the circle)."""
    yy, xx = np.mgrid[:height, :width]
    return (((xx + 0.5 - center[0]) ** 2 + (yy + 0.5 - center[1]) ** 2) <= radius**2).astype(np.float32)


def disc_centers(num: int, width: int, height: int) -> list[tuple[float, float]]:
    """A disc moving left to right across the lower-left half of the frame (never centred, never clipped)."""
    return [(width * (0.25 + 0.3 * i / max(num - 1, 1)), height * 0.6) for i in range(num)]


def disc_frames(
    num: int,
    width: int = 96,
    height: int = 64,
    radius: float = 10.0,
    *,
    rgba: bool = False,
    background=BACKGROUND,
    foreground=FOREGROUND,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of a moving disc and their true alphas; RGBA frames have a transparent background."""
    frames, alphas = [], []
    for center in disc_centers(num, width, height):
        alpha = disc_alpha(width, height, center, radius)
        rgb = np.where(alpha[..., None] > 0, np.array(foreground, np.uint8), np.array(background, np.uint8))
        if rgba:
            rgb = np.dstack([np.where(alpha[..., None] > 0, rgb, 0), (alpha * 255).astype(np.uint8)])
        frames.append(rgb.astype(np.uint8))
        alphas.append(alpha)
    return frames, alphas


def write_video(
    path: Path, frames: list[np.ndarray], fps: int = 24, codec: str = "libx264", pix_fmt: str = "yuv420p"
) -> Path:
    """Encode RGB(A) uint8 frames with PyAV; the container follows the file suffix."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgba" if f.shape[2] == 4 else "rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return Path(path)
