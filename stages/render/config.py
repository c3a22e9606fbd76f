"""RenderConfig: how an animated asset is framed, sampled, lit and rendered (spec §1.3, §2.7, §4.3)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.common.config import StageConfig, SubConfig

__all__ = ["RenderConfig", "CameraConfig", "LightingConfig", "TrainClipsConfig", "CurationConfig"]

ORTHOGONAL_AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)


class CameraConfig(SubConfig):
    """Pinhole camera shared by every view: on an orbit around the origin, looking at it, up = +z."""

    radius: float = Field(1.1, gt=0.0)
    """Distance from the origin, world units. 1.1 as distill's anchor/validation cameras (spec §4.3)."""
    fov_y_deg: float = Field(45.0, gt=1.0, lt=170.0)
    """Vertical field of view, degrees (spec §4.3: 45°)."""
    elevation_deg: float = Field(0.0, gt=-89.0, lt=89.0)
    """Elevation of the input and ground-truth views, degrees (spec §1.3: the input is at elevation 0)."""


class LightingConfig(SubConfig):
    """Fixed world-space lighting: a uniform white environment plus one sun; identical for every view."""

    ambient_strength: float = Field(0.6, ge=0.0)
    """Strength of the uniform white environment light (it lights only; the background stays transparent)."""
    sun_strength: float = Field(2.5, ge=0.0)
    """Irradiance of the sun, W/m² in Blender units."""
    sun_azimuth_deg: float = 35.0
    """Direction the sun shines from, our azimuth convention (0 = front, the input camera's side)."""
    sun_elevation_deg: float = Field(50.0, gt=-90.0, lt=90.0)
    """Elevation the sun shines from, degrees."""
    sun_angle_deg: float = Field(20.0, ge=0.0, le=180.0)
    """Angular diameter of the sun (soft shadows), degrees."""


class TrainClipsConfig(SubConfig):
    """Multi-view training videos for 4DM (spec §2.7): a ring of views around the object, every frame."""

    enabled: bool = False
    """Render `train/` (num_views × all frames; the costly part: 32 views cost 32/5 of input + GT)."""
    num_views: int = Field(32, ge=4)
    """Views evenly spaced over azimuth −180°…180°, spec §2.7: 32 (11.25° apart). A multiple of 4, so every
    view has its three orthogonal partners in the set."""

    @model_validator(mode="after")
    def _multiple_of_four(self) -> TrainClipsConfig:
        if self.num_views % 4:
            raise ValueError(f"train.num_views must be a multiple of 4 (orthogonal views), got {self.num_views}")
        return self


class CurationConfig(SubConfig):
    """The paper's manual filters (spec §2.7: static, leaving the scene), as measured thresholds."""

    curate: bool = False
    """Reject a clip that fails a threshold: nothing is written (a batch logs the reason and goes on)."""
    min_motion: float = Field(0.01, ge=0.0, le=1.0)
    """Lowest accepted `motion` (mean 1 − IoU of the silhouettes of consecutive frames over the GT views)."""
    max_out_of_frame_frac: float = Field(0.0, ge=0.0, le=1.0)
    """Highest accepted fraction of GT images whose silhouette touches the image border."""
    max_travel_ratio: float = Field(2.0, ge=1.0)
    """Highest accepted `travel_ratio` (clip-wide bounding-box diagonal / mean per-frame diagonal): objects that
    move far relative to their size end up small after normalisation, the paper's "out-of-scene movement"."""
    min_coverage: float = Field(0.005, ge=0.0, le=1.0)
    """Lowest accepted `coverage_min` (smallest fraction of a GT image covered by the object)."""


class RenderConfig(StageConfig):
    """Animated 3D asset → monocular input frames, ground-truth views, optional training clips, curation metrics."""

    clip: str = ""
    """Animation clip (Blender action) to render, by name; empty = the first name in alphabetical order.
    The log lists the asset's clips."""
    forward_axis: Literal["-y", "+y", "+x", "-x"] = "-y"
    """Axis the asset faces after import into Blender's z-up world; it is turned (about z) to face +x, our
    azimuth 0 (the input view). glTF assets face +Z, which Blender's importer maps to −Y, hence `-y`."""
    fill_frac: float = Field(0.8, gt=0.0, le=1.0)
    """Normalisation: the clip-wide bounding box is centred at the origin and scaled so its circumscribed
    sphere spans this fraction of the frame height seen from `camera.radius` (so no view ever crops it)."""
    fps: float = Field(8.0, gt=0.0)
    """Rate at which the clip is sampled and the frames play, frames per second."""
    num_frames: int = Field(24, ge=0)
    """Frames to render, at `start_s + i / fps`; 0 = every frame of the clip from `start_s` to its end."""
    start_s: float = Field(0.0, ge=0.0)
    """Clip time of the first frame, seconds."""
    allow_static: bool = False
    """Render an asset without any animation as a static clip (`num_frames` copies of its pose, with a
    warning) instead of failing."""
    size_px: int = Field(256, ge=8)
    """Side of the square renders, pixels (the paper works at 256)."""
    engine: Literal["cycles", "eevee"] = "cycles"
    """Blender renderer. `cycles` runs on CPU anywhere (~0.4 s per 256² frame at 16 samples on 2 cores);
    `eevee` needs OpenGL and falls back to software GL without a GPU (~30 s per 64² frame here)."""
    samples: int = Field(16, ge=1)
    """Samples per pixel (Cycles path samples or Eevee TAA samples); no denoiser; equal seeds give equal images."""
    camera: CameraConfig = CameraConfig()
    """Camera intrinsics and orbit shared by the input, ground-truth and training views."""
    input_azimuth_deg: float = 0.0
    """Azimuth of the monocular input view, degrees. The paper assumes the front, 0 (spec §1.3)."""
    gt_azimuths_deg: tuple[float, ...] = ORTHOGONAL_AZIMUTHS_DEG
    """Ground-truth view azimuths, degrees: first the 4 orthogonal views 0/90/180/270 that mvgen produces and
    eval compares, then any extra novel views."""
    lighting: LightingConfig = LightingConfig()
    """Lights (fixed in the world, so all views see one consistently lit object)."""
    train: TrainClipsConfig = TrainClipsConfig()
    """Multi-view training clips for 4DM."""
    curation: CurationConfig = CurationConfig()
    """Curation thresholds and whether to apply them."""
    prompt: str | None = None
    """Prompt/caption. When unset: `<asset stem>.txt` beside the asset, else the asset name ("Fox" → "fox")."""
    seed: int = 0
    """Cycles sampling seed (equal seeds give byte-identical renders)."""

    @model_validator(mode="after")
    def _orthogonal_first(self) -> RenderConfig:
        head = tuple(a % 360.0 for a in self.gt_azimuths_deg[:4])
        if head != ORTHOGONAL_AZIMUTHS_DEG:
            raise ValueError(f"gt_azimuths_deg must start with 0, 90, 180, 270; got {list(self.gt_azimuths_deg)}")
        return self
