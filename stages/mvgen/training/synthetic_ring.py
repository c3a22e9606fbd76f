"""Synthetic training rings for tests and CPU experiments: a render-stage artifact (`RenderManifest` with a train/
ring, as `scripts/render_demo_training_data.py` writes for real assets) whose images come from a function.

Used by the training tests and the camera-learning experiment of weights/demo/README.md; the training code reads
these exactly as real renders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from stages.common.artifacts import RenderManifest, ViewSet
from stages.common.cameras import OrbitCamera, save_cameras
from stages.common.image_io import write_rgba

__all__ = ["write_ring_artifact"]


def write_ring_artifact(
    art: Path,
    image: Callable[[int, int], np.ndarray],
    *,
    views: int,
    frames: int,
    size_px: int,
    caption: str,
    code_version: str = "synthetic",
) -> Path:
    """Write `art` as a render artifact with a `views`-view training ring of `frames` frames.

    Args:
        art: the artifact folder; its name is the subject.
        image: (view, frame) → uint8 RGBA (size_px, size_px, 4).
        views, frames, size_px: the ring's size.
        caption: `train/caption.txt` and the manifest's prompt.
        code_version: recorded in the manifest.

    Cameras: azimuth −180° + 360°·v/views, elevation 0, radius 1.1, fovy 45° (the render stage's training ring).
    Returns `art`.
    """
    files = []
    for v in range(views):
        for f in range(frames):
            rel = f"train/v{v:02d}/rgba_{f:05d}.png"
            write_rgba(art / rel, image(v, f))
            files.append(rel)
    cams = [OrbitCamera.from_angles(v, -180.0 + 360.0 * v / views, 0.0, 1.1, 45.0) for v in range(views)]
    save_cameras(art / "train" / "cameras.json", cams)
    (art / "train" / "caption.txt").write_text(caption)
    files += ["train/cameras.json", "train/caption.txt"]
    gt = ViewSet(
        num_views=views,
        num_frames=frames,
        size_px=size_px,
        frame_template="train/v{view:02d}/rgba_{frame:05d}.png",
        cameras_file="train/cameras.json",
        source_indices=list(range(frames)),
    )
    RenderManifest(
        subject=art.name,
        files=files,
        config_sha256="0",
        code_version=code_version,
        input_dir="train/v00",
        input_camera=cams[0].model_dump(),
        gt=gt,
        fps=8.0,
        prompt=caption,
        train_dir="train",
    ).write(art)
    return art
