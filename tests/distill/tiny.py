"""Tiny upstream artifacts for the distill tests: a real preprocess → mvgen chain (tiny 4DM), tiny LPIPS files."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.common.config import load_config, load_runtime
from stages.common.lpips import LPIPSVGG, save_lpips_vgg
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline
from tests.synthetic import disc_frames, write_video

REPO = Path(__file__).resolve().parents[2]
TINY_VGG_WIDTHS = (4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8)


def tiny_distill_config():
    """configs/tiny/distill.yaml with the run-time knobs of configs/tiny/runtime.yaml (small march chunks)."""
    from stages.distill import DistillConfig

    config = load_config(DistillConfig, REPO / "configs/tiny/distill.yaml")
    runtime = load_runtime(DistillConfig, REPO / "configs/tiny/runtime.yaml", "distill")
    return config.model_copy(update={"runtime": runtime})


def write_tiny_lpips(directory: Path, seed: int = 0) -> Path:
    """A random narrow VGG16 + positive heads, saved in the real files' layout (torchvision / lpips keys)."""
    torch.manual_seed(seed)
    model = LPIPSVGG(input_range="zero_to_one_unscaled", channel_norm="lpips", widths=TINY_VGG_WIDTHS)
    for head in model.heads:
        head.model[1].weight.abs_()  # trained heads are non-negative
    return save_lpips_vgg(model, directory)


def make_upstream(root: Path) -> dict[str, Path]:
    """weights (tiny 4DM), lpips, pre (preprocess at the tiny 4DM's 16 px), mvgen (2 DDIM steps) under `root`."""
    from stages.mvgen import MvgenConfig
    from stages.mvgen import run as mvgen
    from stages.preprocess import PreprocessConfig
    from stages.preprocess import run as preprocess

    tiny_pipeline(root).save_pretrained(root / "weights")
    frames, _ = disc_frames(12, 80, 60, radius=9)
    write_video(root / "disc.mp4", frames, fps=12)
    (root / "disc.txt").write_text("an orange disc")
    pre_cfg = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml").model_copy(
        update={"size_px": IMAGE_PX}
    )
    preprocess(pre_cfg, input_path=root / "disc.mp4", output_dir=root / "pre", subject="tiny")
    mvgen(
        load_config(MvgenConfig, REPO / "configs/tiny/mvgen.yaml"),
        input_dir=root / "pre",
        weights_dir=root / "weights",
        output_dir=root / "mvgen",
    )
    return {
        "weights": root / "weights",
        "lpips": write_tiny_lpips(root / "lpips"),
        "pre": root / "pre",
        "mvgen": root / "mvgen",
    }
