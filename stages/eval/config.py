"""EvalConfig: the evaluation protocol's knobs (spec §6; peers-and-eval §2.2 and §2.4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stages.common.config import StageConfig

__all__ = ["EvalConfig"]


class EvalConfig(StageConfig):
    """Score predicted views × frames against ground-truth views: CLIP-I, CLIP-C, FVD, LPIPS, PSNR, SSIM."""

    image_size_px: int = Field(512, ge=16)
    """Side that prediction and ground truth are resized to (PIL bicubic), after compositing on white, before
    CLIP, LPIPS, PSNR and SSIM. 512 as the Consistent4D scripts, so sizes of the two sides may differ."""
    fvd_size_px: int = Field(224, ge=193)
    """Side of the frames fed to I3D (bicubic per channel, float, as the Consistent4D FVD script). I3D's final
    2×7×7 average pool needs at least 193 px."""
    fvd_min_frames: int = Field(16, ge=9)
    """I3D needs at least 9 frames (8× temporal downsampling before a 2-step pool): a clip with fewer frames
    is stretched by repeating every frame `ceil(fvd_min_frames / F)` times (8 frames → each twice)."""
    camera_tolerance_deg: float = Field(1.0, gt=0.0, lt=45.0)
    """A prediction view and a ground-truth view pair when azimuth and elevation both agree within this many
    degrees (`cameras.json`); every prediction view must find exactly one ground-truth partner."""
    ssim_kernel_size: int = Field(11, ge=3)
    """SSIM Gaussian window side, pixels (odd). 11 as Wang et al. 2004, torchmetrics and scikit-image."""
    ssim_sigma: float = Field(1.5, gt=0.0)
    """SSIM Gaussian window standard deviation, pixels."""
    ssim_padding: Literal["valid", "reflect"] = "valid"
    """SSIM borders: `valid` averages where the window fits (Wang et al. 2004, scikit-image); `reflect` pads by
    half a window and averages the whole image (torchmetrics 1.9, which the Consistent4D script calls)."""
    batch_size: int = Field(8, ge=1)
    """Images per CLIP / LPIPS forward pass (memory only; results do not depend on it)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the networks run: `auto` takes CUDA when torch sees it."""
    report_thumb_px: int = Field(128, ge=16)
    """Side of the frame thumbnails in report.html and grid.png, pixels."""

    @field_validator("ssim_kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd, got {value}")
        return value
