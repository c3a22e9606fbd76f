"""Official checkpoint conversion: ImageDream `.pt` + `4dm.ckpt` + CLIP folders → a FourDM weights folder."""

from stages.mvgen.conversion.convert import convert, load_checkpoint, load_strict, sd_vae

__all__ = ["convert", "load_checkpoint", "load_strict", "sd_vae"]
