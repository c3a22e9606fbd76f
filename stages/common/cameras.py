"""Camera conventions, written once for every stage (spec §1.3, house style §8.4).

Conventions:
- World: z-up, object at the origin (threestudio). Camera position for azimuth A, elevation E, radius d:
  `d·(cos E·cos A, cos E·sin A, sin E)`; azimuth 0 is the front view, the one the input video shows.
- `c2w`: 4×4 camera-to-world, row-major, OpenGL camera axes (+X right, +Y up, camera looks down −Z), i.e. the
  rotation's columns are `[right, up, -lookat]`.
- Angles are degrees and say so in their names. Time is `t = frame / (num_frames - 1)`.

ImageDream's `get_camera` (bytedance/ImageDream, `camera_utils.py`) builds the same kind of matrix in a
y-up world and then rotates it into z-up ("blender") coordinates. Its azimuth `a` is our azimuth `a − 90°`
(spec §1.3), so 4DM's demo cameras `get_camera(4, elevation=0, azimuth_start=90)` are our azimuths
0/90/180/270. `imagedream_c2w` re-derives that construction so tests can prove the mapping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

__all__ = [
    "OrbitCamera",
    "orbit_c2w",
    "imagedream_c2w",
    "threestudio_to_imagedream_azimuth",
    "imagedream_to_threestudio_azimuth",
    "fourdm_camera_vectors",
    "frame_time",
    "focal_length_px",
    "save_cameras",
    "load_cameras",
]

IMAGEDREAM_AZIMUTH_OFFSET_DEG = 90.0
"""ImageDream azimuth − threestudio azimuth for the same camera (spec §1.3)."""


def _look_at_c2w(position: np.ndarray, up: np.ndarray) -> np.ndarray:
    """c2w (OpenGL axes) of a camera at `position` looking at the origin, `up` being the world's up."""
    lookat = -position / np.linalg.norm(position)
    right = np.cross(lookat, up)
    norm = np.linalg.norm(right)
    if norm < 1e-12:
        raise ValueError("camera looks straight along the up axis (elevation ±90°): its right vector is undefined")
    right /= norm
    true_up = np.cross(right, lookat)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -lookat, position
    return c2w


def orbit_c2w(azimuth_deg: float, elevation_deg: float, radius: float = 1.0) -> np.ndarray:
    """Camera-to-world (4×4 float64) on an orbit around the origin, threestudio convention (module docstring)."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    position = radius * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    return _look_at_c2w(position, np.array([0.0, 0.0, 1.0]))


def imagedream_c2w(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """The matrix ImageDream's `get_camera` produces for one view (unit radius, `blender_coord=True`).

    Built in a y-up world (position `(cos E·sin a, sin E, cos E·cos a)`), then left-multiplied by the
    rotation that maps y-up to z-up: (x, y, z) → (x, −z, y).
    """
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    position = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    c2w_y_up = _look_at_c2w(position, np.array([0.0, 1.0, 0.0]))
    y_up_to_z_up = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    return y_up_to_z_up @ c2w_y_up


def threestudio_to_imagedream_azimuth(azimuth_deg: float) -> float:
    """Our (threestudio) azimuth → the ImageDream `get_camera` azimuth of the same camera."""
    return azimuth_deg + IMAGEDREAM_AZIMUTH_OFFSET_DEG


def imagedream_to_threestudio_azimuth(azimuth_deg: float) -> float:
    """ImageDream `get_camera` azimuth → our (threestudio) azimuth of the same camera."""
    return azimuth_deg - IMAGEDREAM_AZIMUTH_OFFSET_DEG


def fourdm_camera_vectors(azimuths_deg: Sequence[float], elevation_deg: float = 0.0) -> np.ndarray:
    """4DM camera conditioning: one flattened, unit-radius c2w per view plus a zero row for the reference slot.

    Equals ImageDream's `get_camera(len(azimuths), elevation, azimuth_start, extra_view=True)` after
    `normalize_camera`, with azimuths given in our convention (spec §2.4b: the reference slot's zero vector
    still passes through `camera_embed`'s biases).

    Returns:
        float32 array of shape (V + 1, 16), row-major flattened 4×4 matrices.
    """
    rows = [orbit_c2w(a, elevation_deg, 1.0).reshape(16) for a in azimuths_deg]
    rows.append(np.zeros(16))
    return np.stack(rows).astype(np.float32)


def frame_time(frame: int, num_frames: int) -> float:
    """Normalised time of frame `frame` of `num_frames`: `frame / (num_frames - 1)`, 0 for a single frame."""
    if not 0 <= frame < num_frames:
        raise ValueError(f"frame {frame} outside 0..{num_frames - 1}")
    return 0.0 if num_frames == 1 else frame / (num_frames - 1)


def focal_length_px(fov_y_deg: float, height_px: int) -> float:
    """Pinhole focal length in pixels for a vertical field of view."""
    return 0.5 * height_px / math.tan(math.radians(fov_y_deg) / 2)


class OrbitCamera(BaseModel):
    """One view of a multi-view artifact, as stored in `cameras.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    view: int
    """Index of the view (folder `v{view:02d}`)."""
    azimuth_deg: float
    elevation_deg: float
    radius: float
    fov_y_deg: float
    c2w: list[list[float]]
    """4×4 row-major camera-to-world, OpenGL axes."""

    @field_validator("c2w")
    @classmethod
    def _check_c2w(cls, value: list[list[float]]) -> list[list[float]]:
        if len(value) != 4 or any(len(row) != 4 for row in value):
            raise ValueError("c2w must be 4×4")
        return value

    @classmethod
    def from_angles(
        cls, view: int, azimuth_deg: float, elevation_deg: float, radius: float, fov_y_deg: float
    ) -> OrbitCamera:
        """A camera on the orbit, its c2w computed from the angles."""
        c2w = orbit_c2w(azimuth_deg, elevation_deg, radius)
        return cls(
            view=view,
            azimuth_deg=azimuth_deg,
            elevation_deg=elevation_deg,
            radius=radius,
            fov_y_deg=fov_y_deg,
            c2w=c2w.tolist(),
        )

    def c2w_array(self) -> np.ndarray:
        """c2w as a float64 (4, 4) array."""
        return np.asarray(self.c2w, dtype=np.float64)


def save_cameras(path: Path, cameras: Sequence[OrbitCamera]) -> None:
    """Write `cameras.json`: a list of per-view camera records."""
    Path(path).write_text(json.dumps([c.model_dump() for c in cameras], indent=2) + "\n", encoding="utf-8")


def load_cameras(path: Path) -> list[OrbitCamera]:
    """Read `cameras.json` written by `save_cameras`."""
    return [OrbitCamera.model_validate(c) for c in json.loads(Path(path).read_text(encoding="utf-8"))]
