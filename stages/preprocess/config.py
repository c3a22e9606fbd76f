"""PreprocessConfig: how frames are picked, matted and framed (spec §1.2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.common.config import StageConfig, SubConfig

__all__ = ["PreprocessConfig", "MattingConfig"]


class MattingConfig(SubConfig):
    """Foreground alpha for inputs that have no alpha channel of their own."""

    backend: Literal["border", "rembg"] = "border"
    """`border`: offline, no download; models the background from the frame border and refines with GrabCut
    (plain, roughly uniform backgrounds). `rembg`: U^2-Net via rembg/ONNX Runtime, reading
    `<weights>/<rembg_model>.onnx` (as the official code does, spec §1.1 stage C)."""
    rembg_model: Literal["u2net", "u2netp", "u2net_human_seg", "silueta"] = "u2net"
    """rembg U^2-Net-family model; its file `<rembg_model>.onnx` is read from the `--weights` folder."""
    border_width_frac: float = Field(0.03, gt=0.0, lt=0.5)
    """`border`: width of the frame band that samples the background colour, fraction of the shorter side."""
    border_threshold: float = Field(18.0, gt=0.0)
    """`border`: CIELAB distance from the background colour above which a pixel is probably foreground."""
    grabcut_iterations: int = Field(4, ge=0)
    """`border`: GrabCut refinement iterations (0 keeps the plain colour threshold)."""
    work_size_px: int = Field(384, ge=32)
    """`border`: longer side at which the mask is computed (then upsampled); bounds the cost on big videos."""
    min_component_frac: float = Field(0.05, ge=0.0, le=1.0)
    """`border`: drop foreground blobs smaller than this fraction of the largest one (specks, noise)."""


class PreprocessConfig(StageConfig):
    """Video (or frame folder) → `num_frames` square RGBA frames, foreground matted and recentred."""

    num_frames: int = Field(8, ge=1)
    """Frames to keep. The paper keeps 8 (spec §1.2)."""
    frame_selection: Literal["paper", "even", "stride"] = "paper"
    """`paper`: indices `floor(T/num_frames·i)` as the official code (T=25 → 0,3,…,21). `even`: spread over
    the whole clip including its last frame. `stride`: `start_frame + i·stride`."""
    stride: int = Field(1, ge=1)
    """Frame step for `frame_selection: stride`."""
    start_frame: int = Field(0, ge=0)
    """First source frame for `frame_selection: stride`."""
    size_px: int = Field(256, ge=8)
    """Side of the square output frames, pixels (the paper works at 256)."""
    framing: Literal["recenter", "keep"] = "recenter"
    """`recenter`: one square box around the object over the whole clip, with `margin_frac` (any video).
    `keep`: the frame's own framing, padded to a square around the image centre (inputs rendered with the eval
    cameras, e.g. by the render stage, so reconstructions and ground truth share one scale, as the official
    evaluation feeds its rendered inputs unchanged)."""
    margin_frac: float = Field(0.1, ge=0.0, lt=0.5)
    """Empty margin on each side of the object, fraction of the output side: the clip's union box fills
    `1 - 2·margin_frac` of the frame along its longer side."""
    mask_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Alpha above which a pixel counts as object, for the crop box and the empty-mask check (as the
    official anchor mask, alpha > 0.5)."""
    use_input_alpha: bool = True
    """Use the input's own alpha channel when it has a non-opaque one, instead of matting."""
    matting: MattingConfig = MattingConfig()
    """Background removal for inputs without alpha."""
    prompt: str | None = None
    """Text prompt. When unset, read from `<video stem>.txt` or `prompt.txt` beside the video (inside a frame
    folder); none is fine too."""
    folder_fps: float = Field(0.0, ge=0.0)
    """Frame rate of a frame-folder input (folders carry none); 0 = unknown, previews then play at 8 fps."""
    seed: int = 0
    """Seed for the randomised parts (GrabCut's colour-model initialisation)."""
