"""Key mappings from the official checkpoints to our modules (spec §3.1, fixtures/official-keys/README.md).

- `sd-v2.1-base-4view-ipmv.pt` (ImageDream): UNet under `model.diffusion_model.`, VAE under `vae_model.` in LDM
  naming. The UNet needs the four index renames because 4DM inserts motion modules (spec §2.2).
- `4dm.ckpt`: `{"state_dict": {...}}` with `module.`-prefixed keys, already in 4DM indexing (no renames).
- The LDM VAE names map to diffusers' `AutoencoderKL` (its attention 1×1 convolutions become linear layers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

__all__ = [
    "IMAGEDREAM_UNET_PREFIX",
    "IMAGEDREAM_VAE_PREFIX",
    "FOURDM_INDEX_RENAMES",
    "index_renames",
    "imagedream_unet_to_fourdm",
    "fourdm_to_imagedream_unet",
    "fourdm_checkpoint_to_unet",
    "ldm_vae_to_diffusers",
    "diffusers_vae_to_ldm",
]

IMAGEDREAM_UNET_PREFIX = "model.diffusion_model."
IMAGEDREAM_VAE_PREFIX = "vae_model."
FOURDM_INDEX_RENAMES: tuple[tuple[str, str], ...] = (
    ("middle_block.2.", "middle_block.3."),
    ("output_blocks.2.1.", "output_blocks.2.2."),
    ("output_blocks.5.2.", "output_blocks.5.3."),
    ("output_blocks.8.2.", "output_blocks.8.3."),
)
"""ImageDream → 4DM index shifts (first match wins), as the official `model_zoo.build_model` applies them."""


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def index_renames(unet: nn.Module) -> tuple[tuple[str, str], ...]:
    """ImageDream → 4DM index shifts for any FourDMUNet layout: a layer after a motion module moves up one index.

    For the full-size UNet this gives exactly `FOURDM_INDEX_RENAMES` (a test checks it).
    """
    renames = []
    blocks = [(f"input_blocks.{i}", b) for i, b in enumerate(unet.input_blocks)]
    blocks += [("middle_block", unet.middle_block)]
    blocks += [(f"output_blocks.{i}", b) for i, b in enumerate(unet.output_blocks)]
    for name, block in blocks:
        without = 0
        for with_mm, layer in enumerate(block):
            if type(layer).__name__ == "VanillaTemporalModule":
                continue
            if with_mm != without:
                renames.append((f"{name}.{without}.", f"{name}.{with_mm}."))
            without += 1
    return tuple(renames)


def imagedream_unet_to_fourdm(
    state: Mapping[str, Tensor], renames: tuple[tuple[str, str], ...] = FOURDM_INDEX_RENAMES
) -> dict[str, Tensor]:
    """The ImageDream checkpoint's UNet entries, prefix stripped and re-indexed for the 4DM UNet."""
    out = {}
    for key, value in state.items():
        if key.startswith(IMAGEDREAM_UNET_PREFIX):
            out[_rename(key[len(IMAGEDREAM_UNET_PREFIX) :], renames)] = value
    return out


def fourdm_to_imagedream_unet(
    state: Mapping[str, Tensor],
    motion_prefixes: list[str],
    renames: tuple[tuple[str, str], ...] = FOURDM_INDEX_RENAMES,
) -> dict[str, Tensor]:
    """Inverse of `imagedream_unet_to_fourdm` for the non-motion keys (used to build official-format test files)."""
    inverse = tuple((new, old) for old, new in renames)
    out = {}
    for key, value in state.items():
        if any(key.startswith(p + ".") for p in motion_prefixes):
            continue
        out[IMAGEDREAM_UNET_PREFIX + _rename(key, inverse)] = value
    return out


def fourdm_checkpoint_to_unet(checkpoint: Mapping[str, object]) -> dict[str, Tensor]:
    """`4dm.ckpt` → UNet state dict: unwrap `state_dict` and strip DDP's `module.` prefix."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError("4DM checkpoint holds no state dict")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


_VAE_RULES: tuple[tuple[str, str], ...] = (
    (r"^(encoder|decoder)\.mid\.block_(\d)\.", "mid_block_resnet"),
    (r"^(encoder|decoder)\.mid\.attn_1\.", "mid_block_attn"),
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", "down_resnet"),
    (r"^encoder\.down\.(\d+)\.downsample\.conv\.", "down_sample"),
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", "up_resnet"),
    (r"^decoder\.up\.(\d+)\.upsample\.conv\.", "up_sample"),
)
_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def ldm_vae_to_diffusers(
    state: Mapping[str, Tensor], num_levels: int = 4, prefix: str = IMAGEDREAM_VAE_PREFIX
) -> dict[str, Tensor]:
    """LDM `AutoencoderKL` names (under `prefix`) → diffusers `AutoencoderKL` names.

    Decoder levels are reversed (LDM `up.0` is the last, full-resolution level); attention 1×1 convolutions
    become linear weights; `nin_shortcut` → `conv_shortcut`, `norm_out` → `conv_norm_out`.
    """
    out = {}
    for full_key, value in state.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        new = key
        if m := re.match(_VAE_RULES[0][0], key):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}." + key[m.end() :]
        elif m := re.match(_VAE_RULES[1][0], key):
            name, _, param = key[m.end() :].partition(".")
            new = f"{m[1]}.mid_block.attentions.0.{_ATTN_NAMES[name]}.{param}"
            if param == "weight" and value.ndim == 4:
                value = value[:, :, 0, 0]
        elif m := re.match(_VAE_RULES[2][0], key):
            new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}." + key[m.end() :]
        elif m := re.match(_VAE_RULES[3][0], key):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.conv." + key[m.end() :]
        elif m := re.match(_VAE_RULES[4][0], key):
            new = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}." + key[m.end() :]
        elif m := re.match(_VAE_RULES[5][0], key):
            new = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv." + key[m.end() :]
        new = new.replace(".nin_shortcut.", ".conv_shortcut.").replace("norm_out.", "conv_norm_out.")
        out[new] = value
    return out


def diffusers_vae_to_ldm(
    state: Mapping[str, Tensor], num_levels: int = 4, prefix: str = IMAGEDREAM_VAE_PREFIX
) -> dict[str, Tensor]:
    """Inverse of `ldm_vae_to_diffusers` (builds official-format files for tests)."""
    inv_attn = {v: k for k, v in _ATTN_NAMES.items()}
    out = {}
    for key, value in state.items():
        new = key.replace(".conv_shortcut.", ".nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        if m := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", new):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}." + new[m.end() :]
        elif m := re.match(
            r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.", new
        ):
            new = f"{m[1]}.mid.attn_1.{inv_attn[m[2]]}." + new[m.end() :]
            if new.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", new):
            new = f"encoder.down.{m[1]}.block.{m[2]}." + new[m.end() :]
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", new):
            new = f"encoder.down.{m[1]}.downsample.conv." + new[m.end() :]
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", new):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}." + new[m.end() :]
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.", new):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv." + new[m.end() :]
        out[prefix + new] = value
    return out
