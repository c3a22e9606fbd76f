"""4DM network: ImageDream's multi-view UNet with AnimateDiff-style motion modules (spec §2)."""

from stages.mvgen.models.unet_fourdm import FourDMUNet

__all__ = ["FourDMUNet"]
