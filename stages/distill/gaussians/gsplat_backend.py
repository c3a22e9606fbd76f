"""The GPU rasteriser: gsplat 1.5.3's `rasterization` (CUDA kernels compiled at first use) with our signature.

`rasterize_torch` (rasterize.py) defines the conventions; gsplat's classic mode with `eps2d` 0.3, `near_plane`,
`render_mode="RGB+ED"` and a background per image computes the same images (tests/distill/test_gaussians_gsplat.py
compares the two backends, values and gradients). gsplat is imported only when `gaussians.backend` is `gsplat`; it is
not a dependency of the project (`pip install gsplat==1.5.3` on a CUDA machine with nvcc).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stages.common.errors import StageError
from stages.distill.gaussians.rasterize import RasterOutput

__all__ = ["require_gsplat", "rasterize_gsplat", "GSPLAT_VERSION"]

GSPLAT_VERSION = "1.5.3"


def require_gsplat(device: torch.device) -> None:
    """Fail early, before any optimisation, when the gsplat backend cannot run here.

    Raises:
        StageError: `device` is not CUDA (gsplat has no CPU path), or gsplat is not installed, or not 1.5.3.
    """
    if device.type != "cuda":
        raise StageError(
            f"gaussians.backend gsplat needs CUDA (gsplat has no CPU path); the run is on {device}: "
            "use gaussians.backend torch on a CPU"
        )
    try:
        import gsplat
    except ImportError as err:
        raise StageError(
            f"gaussians.backend gsplat needs gsplat=={GSPLAT_VERSION} (pip install gsplat=={GSPLAT_VERSION}; it "
            f"compiles its CUDA kernels at first use with nvcc): {err}"
        ) from None
    if getattr(gsplat, "__version__", "") != GSPLAT_VERSION:
        found = gsplat.__version__
        raise StageError(f"gaussians.backend gsplat is tested with gsplat {GSPLAT_VERSION}, found {found}")


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colours: Tensor,
    viewmats: Tensor,
    ks: Tensor,
    size: int,
    *,
    background: Tensor,
    near_plane: float = 0.01,
    eps2d: float = 0.3,
    tile: int = 16,
) -> RasterOutput:
    """`rasterize_torch`'s arguments and result, on gsplat's kernels: every batch (time) and camera in one call
    (gsplat's batch dimension); its tiles are 16 pixels, `tile` is the reference's knob."""
    from gsplat import rasterization

    num_b, num_n = means.shape[:2]
    num_c = viewmats.shape[0]
    colours_rgb, alpha, _ = rasterization(
        means.contiguous(),
        quats.expand(num_b, num_n, 4).contiguous(),  # gsplat wants every per-Gaussian input per batch
        scales.expand(num_b, num_n, 3).contiguous(),
        opacities.expand(num_b, num_n).contiguous(),
        colours.expand(num_b, num_n, 3).contiguous(),
        viewmats.expand(num_b, num_c, 4, 4).contiguous(),
        ks.expand(num_b, num_c, 3, 3).contiguous(),
        size,
        size,
        near_plane=near_plane,
        eps2d=eps2d,
        render_mode="RGB+ED",
        backgrounds=background.expand(num_b, num_c, 3).contiguous(),
        rasterize_mode="classic",
        packed=False,  # gsplat 1.5.3's packed path checks backgrounds against unbatched images: (B, C, 3) fails
    )  # (B, C, H, W, 4): rgb over the background, expected depth; (B, C, H, W, 1)
    return RasterOutput(rgb=colours_rgb[..., :3], alpha=alpha, depth=colours_rgb[..., 3:])
