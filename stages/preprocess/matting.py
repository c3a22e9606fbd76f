"""Foreground alpha for frames that carry none: an offline border/GrabCut backend and rembg (U^2-Net).

The official pipeline runs `rembg` on every frame (spec §1.1 stage C). rembg needs a model file that cannot
be downloaded at run time here, so the default backend needs nothing: it models the background from the
frame border (inputs are object-centric renders or clips on plain backdrops) and refines the split with
GrabCut. Both return float alpha in [0, 1] at the frame's resolution.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from stages.common.errors import StageError
from stages.common.logs import progress
from stages.preprocess.config import MattingConfig

__all__ = ["matte_frames", "rembg_model_file", "REMBG_MODEL_URL"]

log = logging.getLogger(__name__)

REMBG_MODEL_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/{model}.onnx"


def matte_frames(
    frames_rgb: list[np.ndarray], cfg: MattingConfig, *, seed: int, weights_dir: Path | None
) -> list[np.ndarray]:
    """Alpha for each uint8 (H, W, 3) frame, float32 (H, W) in [0, 1].

    Raises:
        StageError: the rembg backend is chosen but rembg or its model file is missing.
    """
    frames = progress(frames_rgb, desc="matting", unit="frame")
    match cfg.backend:
        case "border":
            return [_matte_border(f, cfg, seed=seed) for f in frames]
        case "rembg":
            return _matte_rembg(frames, rembg_model_file(cfg.rembg_model, weights_dir))
    raise StageError(f"unknown matting backend {cfg.backend!r}; expected border or rembg")


def rembg_model_file(model: str, weights_dir: Path | None) -> Path:
    """Where the rembg backend reads its ONNX model: `<weights_dir or weights/rembg>/<model>.onnx`."""
    return Path(weights_dir if weights_dir is not None else "weights/rembg") / f"{model}.onnx"


# ---------------------------------------------------------------------------------------------------------
# border + GrabCut


def _border_band(h: int, w: int, width: int) -> np.ndarray:
    band = np.zeros((h, w), bool)
    band[:width], band[-width:], band[:, :width], band[:, -width:] = True, True, True, True
    return band


def _keep_main_components(mask: np.ndarray, min_frac: float) -> np.ndarray:
    """Drop blobs smaller than `min_frac` × the largest one, then fill holes not connected to the border."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= min_frac * areas.max()) + 1
    mask = np.isin(labels, keep)
    # Holes: background regions that the border flood fill cannot reach.
    background = (~mask).astype(np.uint8)
    padded = np.pad(background, 1, constant_values=1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 2)
    outside = flood[1:-1, 1:-1] == 2
    return mask | ~outside


def _matte_border(rgb: np.ndarray, cfg: MattingConfig, *, seed: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    # 1. Work at a bounded resolution: the mask is upsampled afterwards, which also softens its edge.
    scale = min(1.0, cfg.work_size_px / max(h, w))
    sh, sw = max(8, round(h * scale)), max(8, round(w * scale))
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1.0 else rgb
    # 2. Background colour: median of the border band in CIELAB (perceptual distances).
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    band = _border_band(sh, sw, max(1, round(cfg.border_width_frac * min(sh, sw))))
    background = np.median(lab[band], axis=0)
    distance = np.linalg.norm(lab - background, axis=2)
    fg = distance > cfg.border_threshold
    # 3. GrabCut: colour models for both sides, seeded by the threshold split, the border definitely background.
    if cfg.grabcut_iterations > 0 and fg.any() and (~fg).any():
        gc = np.where(fg, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        gc[distance > 3 * cfg.border_threshold] = cv2.GC_FGD
        gc[(distance < cfg.border_threshold / 3) | band] = cv2.GC_BGD
        if (gc == cv2.GC_FGD).any() or (gc == cv2.GC_PR_FGD).any():
            cv2.setRNGSeed(seed)  # GrabCut's k-means initialisation draws from OpenCV's global RNG
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.grabCut(
                cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                gc,
                None,
                bgd,
                fgd,
                cfg.grabcut_iterations,
                cv2.GC_INIT_WITH_MASK,
            )
            fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    # 4. Clean up specks and holes, then back to full resolution with a soft (linear) edge.
    fg = _keep_main_components(fg, cfg.min_component_frac) if fg.any() else fg
    alpha = fg.astype(np.float32)
    if (sh, sw) != (h, w):
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(alpha, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# rembg


def _matte_rembg(frames_rgb: Iterable[np.ndarray], model_file: Path) -> list[np.ndarray]:
    if not model_file.is_file():
        url = REMBG_MODEL_URL.format(model=model_file.stem)
        raise StageError(
            f"the rembg backend needs the ONNX model file {model_file}, which is missing: download {url} "
            f"and save it as {model_file} (or pass --weights <folder holding {model_file.name}>)"
        )
    try:
        import rembg
    except ImportError:
        raise StageError("the rembg backend needs rembg and onnxruntime: pip install -e '.[rembg]'") from None
    from PIL import Image

    log.info("rembg: U^2-Net from %s", model_file)
    # rembg loads a custom model only from inside its home folder, which it reads from U2NET_HOME at call time:
    # point that at the model's own folder for the duration of the load.
    previous = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(model_file.parent.resolve())
    try:
        session = rembg.new_session("u2net_custom", model_path=str(model_file.resolve()))
    except Exception as err:  # onnxruntime raises its own types for a corrupt file
        raise StageError(f"cannot load rembg model {model_file}: {err}") from None
    finally:
        if previous is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = previous
    alphas = []
    for rgb in frames_rgb:
        mask = rembg.remove(Image.fromarray(rgb), session=session, only_mask=True)
        alphas.append(np.asarray(mask, dtype=np.float32) / 255.0)
    return alphas
