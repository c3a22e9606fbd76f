"""What eval's numbers depend on besides the images: sizes, clip length, weight files (sha256), library versions."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np
import PIL
import torch

from stages.common.lpips import LPIPSVGG
from stages.eval.config import EvalConfig
from stages.eval.metrics.clip_similarity import ClipImageEncoder, clip_weight_dir
from stages.eval.metrics.fvd import i3d_weight_file
from stages.eval.metrics.inception_i3d import InceptionI3d
from stages.eval.metrics.lpips import lpips_weight_files
from stages.eval.pairing import EvalPairs

__all__ = ["build_protocol"]


def build_protocol(
    config: EvalConfig,
    pairs: EvalPairs,
    weights_dir: Path | None,
    clip: ClipImageEncoder | None,
    lpips_net: LPIPSVGG | None,
    i3d: InceptionI3d | None,
) -> dict[str, str | int | float]:
    """Everything the numbers depend on besides the images: sizes, clip length, weights (sha256), versions."""
    num_frames = len(pairs.frames)
    repeats = max(1, -(-config.fvd_min_frames // num_frames))
    protocol: dict[str, str | int | float] = {
        "num_views": len(pairs.views),
        "num_frames": num_frames,
        "unscored_ground_truth_views": ", ".join(
            f"{g.view} (azimuth {g.azimuth_deg:g}°, elevation {g.elevation_deg:g}°)"
            for g in pairs.unpaired_ground_truth
        )
        or "none",
        "background": "white (straight-alpha compositing)",
        "image_size_px": config.image_size_px,
        "resize": "PIL bicubic",
        "fvd_size_px": config.fvd_size_px,
        "fvd_clip_frames": num_frames * repeats,
        "fvd_frame_repeats": repeats,
        "fvd_pooling": "one clip per view; fvd: Gaussians over all clips; fvd_consistent4d: per view, mean",
        "psnr_ssim_data_range": 1.0,
        "ssim_window": f"gaussian {config.ssim_kernel_size} px, sigma {config.ssim_sigma:g}, {config.ssim_padding}",
        "numpy": np.__version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }
    if clip is not None:
        import transformers

        folder = clip_weight_dir(weights_dir)
        files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
        protocol["clip_weights"] = f"clip/{files[0].name} sha256 {_file_sha256(files[0])[:16]}"
        protocol["clip_processor"] = "CLIPImageProcessorPil (shortest side 224 bicubic, centre crop)"
        protocol["transformers"] = transformers.__version__
    if lpips_net is not None:
        backbone, heads = lpips_weight_files(weights_dir)
        protocol["lpips_weights"] = (
            f"{backbone.name} sha256 {_file_sha256(backbone)[:16]}, {heads.name} sha256 {_file_sha256(heads)[:16]}"
        )
    if i3d is not None:
        path = i3d_weight_file(weights_dir)
        protocol["i3d_weights"] = f"{path.name} sha256 {_file_sha256(path)[:16]}"
    return protocol


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
