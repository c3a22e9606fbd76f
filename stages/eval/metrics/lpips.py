"""LPIPS (VGG), the "Spa. Con." metric of §6, as the Consistent4D protocol computes it.

The network and its loader are `stages.common.lpips` (shared with distill's anchor loss). Eval uses them as
torchmetrics' `LearnedPerceptualImagePatchSimilarity(net_type="vgg")` does: images in [-1, 1]
(`input_range="minus_one_to_one"`; the stage rescales its [0, 1] images) and torchmetrics' channel normalisation
`x / sqrt(Σx² + 1e-8)` (`channel_norm="torchmetrics"`); tests/eval/test_lpips.py checks it against torchmetrics.
The two files live in `<weights>/lpips/` (`vgg16-397923af.pth`, `vgg.pth`; stages.common.lpips describes them).
A missing file skips the metric; a present but wrong one is an error.
"""

from __future__ import annotations

from pathlib import Path

from stages.common.lpips import LPIPSVGG, load_lpips_vgg, lpips_files
from stages.eval.metrics.weights import require

__all__ = ["LPIPS_DIR", "lpips_weight_files", "load_lpips"]

LPIPS_DIR = "lpips"


def lpips_weight_files(weights_dir: Path | None) -> list[Path]:
    """The two files LPIPS loads, `<weights_dir>/lpips/{vgg16-397923af.pth,vgg.pth}`, whether or not they exist."""
    return list(lpips_files(Path(weights_dir or "<weights>") / LPIPS_DIR))


def load_lpips(weights_dir: Path | None) -> LPIPSVGG:
    """LPIPS-VGG with VGG16's real widths from `<weights_dir>/lpips/`, set up as the eval protocol uses it.

    Raises:
        MissingWeights: a file is absent (the metric is then skipped).
        StageError: a file is present but does not hold the expected tensors.
    """
    require(weights_dir, *lpips_weight_files(weights_dir))
    return load_lpips_vgg(Path(weights_dir) / LPIPS_DIR, input_range="minus_one_to_one", channel_norm="torchmetrics")
