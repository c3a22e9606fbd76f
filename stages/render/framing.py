"""Pure geometry of the render stage (no `bpy`): clip timing, asset orientation and normalisation, projection.

Worlds: Blender's importers give a z-up world in which a glTF asset faces −Y (glTF +Y up, +Z forward become
Blender +Z up, −Y forward). Ours (`stages.common.cameras`) is also z-up, with the front (azimuth 0, the input
view) at +x. `asset_to_world` maps the imported scene into ours: turn about z so the asset's forward axis
becomes +x, then centre the clip-wide bounding box at the origin and scale it to the framing radius.
"""

from __future__ import annotations

import math

import numpy as np

from stages.common.errors import StageError

__all__ = [
    "FORWARD_YAW_DEG",
    "yaw_matrix",
    "framing_radius",
    "normalisation_matrix",
    "frame_times",
    "project_points",
]

FORWARD_YAW_DEG = {"+x": 0.0, "+y": -90.0, "-x": 180.0, "-y": 90.0}
"""Rotation about +z (degrees, counter-clockwise seen from above) that turns each forward axis onto +x."""


def yaw_matrix(yaw_deg: float) -> np.ndarray:
    """4×4 rotation about +z by `yaw_deg` (counter-clockwise seen from +z)."""
    a = math.radians(yaw_deg)
    c, s = round(math.cos(a), 15), round(math.sin(a), 15)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def framing_radius(camera_radius: float, fov_y_deg: float, fill_frac: float) -> float:
    """Radius of a sphere at the origin whose silhouette spans `fill_frac` of the frame height.

    A sphere of radius r seen from distance d subtends a half-angle asin(r/d); its image half-height is
    tan(asin(r/d)) = r / sqrt(d² − r²), in units where the frame half-height is tan(fov_y/2).
    """
    k = fill_frac * math.tan(math.radians(fov_y_deg) / 2)
    return camera_radius * k / math.sqrt(1.0 + k * k)


def normalisation_matrix(points: np.ndarray, yaw_deg: float, target_radius: float) -> tuple[np.ndarray, dict]:
    """The 4×4 map from the imported world into ours, and its parts.

    Args:
        points: (N, 3) vertex positions in the imported world, gathered over every frame of the clip.
        yaw_deg: turn about z that brings the asset's forward axis onto +x (`FORWARD_YAW_DEG`).
        target_radius: radius of the sphere circumscribing the bounding box after scaling.

    Returns:
        (M, info): M = S · T(−centre) · R_z, and `info` with `yaw_deg`, `centre` (after the turn), `scale`,
        `bbox_size` (after the turn, before scaling).

    Raises:
        StageError: no points, or a degenerate (zero-size) bounding box.
    """
    if points.size == 0:
        raise StageError("the asset has no mesh vertices to render")
    rot = yaw_matrix(yaw_deg)
    turned = points @ rot[:3, :3].T  # (N, 3)
    lo, hi = turned.min(axis=0), turned.max(axis=0)
    half_diag = float(np.linalg.norm(hi - lo)) / 2
    if not half_diag > 1e-12:
        raise StageError("the asset's bounding box has zero size")
    centre = (lo + hi) / 2
    scale = target_radius / half_diag
    m = np.eye(4)
    m[:3, :3] *= scale
    m[:3, 3] = -scale * centre
    info = {"yaw_deg": yaw_deg, "centre": centre.tolist(), "scale": scale, "bbox_size": (hi - lo).tolist()}
    return m @ rot, info


def frame_times(duration_s: float, fps: float, num_frames: int, start_s: float, *, static: bool) -> list[float]:
    """Clip times (seconds) of the rendered frames: `start_s + i / fps`.

    Args:
        duration_s: length of the clip (0 for a static asset).
        fps: sampling rate.
        num_frames: frames wanted; 0 = as many as fit between `start_s` and the clip end.
        start_s: time of the first frame.
        static: the asset has no animation: every frame shows time 0 (`num_frames` of them, at least one).

    Raises:
        StageError: no frame fits, or more frames are asked for than the clip holds.
    """
    if static:
        return [0.0] * max(num_frames, 1)
    if start_s > duration_s + 1e-9:
        raise StageError(f"the clip lasts {duration_s:.3f} s: start_s={start_s} leaves zero frames to render")
    available = math.floor((duration_s - start_s) * fps + 1e-6) + 1
    n = num_frames or available
    if n > available:
        raise StageError(
            f"the clip lasts {duration_s:.3f} s: at {fps:g} fps from {start_s:g} s it has {available} frames, "
            f"num_frames asks for {n} (lower num_frames or fps)"
        )
    return [start_s + i / fps for i in range(n)]


def project_points(points: np.ndarray, c2w: np.ndarray, fov_y_deg: float, size_px: int) -> np.ndarray:
    """Pixel coordinates (x right, y down, pixel centres at +0.5) of world points seen by an OpenGL camera.

    Args:
        points: (N, 3) world points in front of the camera.
        c2w: 4×4 camera-to-world (OpenGL axes: camera looks down −Z, +Y up).
        fov_y_deg: vertical field of view of a square image.
        size_px: image side.

    Returns:
        (N, 2) float pixel coordinates.
    """
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]  # (N, 3) camera coordinates
    tan_half = math.tan(math.radians(fov_y_deg) / 2)
    ndc = cam[:, :2] / (-cam[:, 2:3] * tan_half)  # (N, 2) in [-1, 1] inside the frame
    return np.stack([(ndc[:, 0] + 1) / 2 * size_px, (1 - ndc[:, 1]) / 2 * size_px], axis=1)
