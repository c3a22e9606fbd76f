"""The eval stage: CLIP-I, CLIP-C, FVD, LPIPS, PSNR and SSIM against ground-truth views (spec §6)."""

from stages.eval.config import EvalConfig
from stages.eval.manifest import EvalManifest
from stages.eval.run import run

__all__ = ["EvalConfig", "EvalManifest", "run"]
