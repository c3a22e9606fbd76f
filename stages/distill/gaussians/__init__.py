"""4D Gaussians (ours; the paper distils a NeRF): the field, its rasterisers (pure-torch reference, gsplat on CUDA),
the visual-hull initialisation and the trainer that `field.representation: gaussians` selects."""

from stages.distill.gaussians.field import GaussianField4D, load_gaussians, save_gaussians
from stages.distill.gaussians.rasterize import RasterOutput, camera_matrices, rasterize_torch
from stages.distill.gaussians.trainer import GaussianTrainer

__all__ = [
    "GaussianField4D",
    "GaussianTrainer",
    "RasterOutput",
    "camera_matrices",
    "load_gaussians",
    "rasterize_torch",
    "save_gaussians",
]
