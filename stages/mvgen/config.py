"""MvgenConfig: how 4DM samples the anchor videos (spec §1.4 stage B, §2.5)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stages.common.config import StageConfig

__all__ = ["MvgenConfig", "OFFICIAL_NEGATIVE_PROMPT"]


OFFICIAL_NEGATIVE_PROMPT = (
    "uniform low no texture ugly, boring, bad anatomy, blurry, pixelated,  obscure, unnatural colors, poor lighting,"
    " dull, and unclear."
)
"""The negative prompt of the official 4DM demo (spec §2.5), double space included."""


class MvgenConfig(StageConfig):
    """Sample 4 orthogonal views × F frames from 4DM for one subject."""

    num_inference_steps: int = Field(100, ge=1)
    """DDIM steps (official demo: 100, eta 0). configs/tiny/mvgen.yaml uses 2."""
    guidance_scale: float = Field(5.0, ge=1.0)
    """Classifier-free guidance weight s in `uncond + s·(cond − uncond)` (official: 5)."""
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    """Text of the unconditional branch (official demo's negative prompt)."""
    fallback_prompt: str = ""
    """Prompt used when the preprocess artifact carries none."""
    window_frames: int = Field(8, ge=2)
    """Frames per 4DM pass (the paper's 8). Longer inputs take several passes that all include frame 0, its
    result held fixed after the first pass (paper §3.3, Fig. 5; not in the official release)."""
    elevation_deg: float = 0.0
    """Elevation of the 4 generated views, degrees (the official demo hard-codes 0)."""
    azimuth_offsets_deg: tuple[float, ...] = Field((0.0,), min_length=1)
    """Ours ((0,) = the paper): one 4DM sampling per offset, each of 4 orthogonal views starting at that azimuth
    from the input view, written one set after the other (views 0–3: offset 0's front, left, back, right; 4–7:
    the next offset's...). (0, 45) adds the 4 diagonal views, which the distill stage's reconstruction term then
    fits too (stages/distill/README.md). Offsets must differ modulo 90°, or two views would share a camera."""
    camera_radius: float = Field(1.1, gt=0.0)
    """Radius recorded in cameras.json: the distance at which the distill stage renders these views (spec §4.3)."""
    camera_fov_y_deg: float = Field(45.0, gt=0.0, lt=180.0)
    """Vertical field of view recorded in cameras.json (spec §4.3)."""
    seed: int = 23
    """Sampling seed (the official demo uses 23)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run; `cuda` without a GPU is an error."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Network precision. The official demo samples in fp32; half precision is an explicit speed-up."""
    channels_last: bool = False
    """Run the UNet and VAE convolutions in channels-last memory layout (a GPU speed option; same results up
    to float rounding)."""
    alpha_low: float = Field(0.03, ge=0.0, lt=1.0)
    """Alpha from the white background: pixels closer than this to white (max channel distance) are empty."""
    alpha_high: float = Field(0.12, gt=0.0, le=1.0)
    """...and pixels farther than this are opaque, with a linear ramp in between."""

    @field_validator("azimuth_offsets_deg")
    @classmethod
    def _distinct_cameras(cls, offsets: tuple[float, ...]) -> tuple[float, ...]:
        residues = [round(o % 90.0, 6) % 90.0 for o in offsets]
        if len(set(residues)) != len(residues):
            raise ValueError(f"azimuth offsets {list(offsets)} repeat a camera (they must differ modulo 90°)")
        return offsets
