"""Convert the official ImageDream + 4DM checkpoints (and local CLIP folders) into a FourDM weights folder.

    python -m stages.mvgen.conversion --imagedream ckpts/sd-v2.1-base-4view-ipmv.pt --fourdm ckpts/4dm.ckpt \
        --text-encoder <SD-2.1-base folder> --image-encoder <CLIP-ViT-H-14 folder> --output weights/fourdm

Checkpoints are read with `torch.load(weights_only=True)` and loaded strictly: any missing, unexpected or
mis-shaped key stops the conversion and is named. The output appears only when everything succeeded.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn
from transformers import CLIPImageProcessorPil, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from stages.common.artifacts import staged_output_dir
from stages.common.errors import StageError
from stages.mvgen.conversion.keys import (
    fourdm_checkpoint_to_unet,
    imagedream_unet_to_fourdm,
    index_renames,
    ldm_vae_to_diffusers,
)
from stages.mvgen.models import FourDMUNet
from stages.mvgen.pipeline_fourdm import FourDMPipeline, official_scheduler

__all__ = ["load_checkpoint", "load_strict", "sd_vae", "convert", "find_component"]

log = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> Mapping[str, object]:
    """`torch.load(path, weights_only=True)` on CPU, with one-line errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise StageError(
            f"{path}: refused by torch.load(weights_only=True), it holds more than tensors "
            f"({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise StageError(f"{path}: corrupt or truncated checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(obj, Mapping):
        raise StageError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Load `state` into `module`, refusing missing, unexpected or mis-shaped keys (naming up to 5 of each)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
        if keys:
            more = f" … (+{len(keys) - 5})" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {label} keys: {', '.join(keys[:5])}{more}")
    if problems:
        raise StageError(f"{what} does not match the model: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)


def sd_vae(block_out_channels: tuple[int, ...] = (128, 256, 512, 512), layers_per_block: int = 2) -> AutoencoderKL:
    """The SD/ImageDream VAE as a diffusers AutoencoderKL (scaling factor 0.18215)."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=4,
        sample_size=256,
        scaling_factor=0.18215,
    )


def find_component(root: Path, sub: str) -> Path:
    """`root/sub` when it exists (a whole SD/CLIP download), else `root` itself (a single component folder)."""
    root = Path(root)
    if not root.is_dir():
        raise StageError(f"folder not found: {root}")
    return root / sub if (root / sub).is_dir() else root


def convert(
    *,
    imagedream: Path,
    fourdm: Path | None,
    text_encoder: Path,
    image_encoder: Path,
    output: Path,
    unet: FourDMUNet | None = None,
    vae: AutoencoderKL | None = None,
) -> FourDMPipeline:
    """Build a FourDM weights folder. `unet`/`vae` override the full-size architectures (tests use tiny ones).

    With `fourdm=None` the motion modules keep their zero initialisation (the ImageDream model with identity
    motion modules, a valid start for training); otherwise every motion-module key must come from `fourdm`.
    """
    unet = unet or FourDMUNet()
    vae = vae or sd_vae()
    # 1. UNet: ImageDream weights re-indexed for 4DM, then the 4DM checkpoint on top.
    imagedream_state = load_checkpoint(imagedream)
    unet_state = imagedream_unet_to_fourdm(imagedream_state, index_renames(unet))
    if not unet_state:
        raise StageError(f"{imagedream}: no 'model.diffusion_model.' keys, not an ImageDream checkpoint")
    motion_prefixes = tuple(p + "." for p in unet.motion_module_names())
    if fourdm is not None:
        motion_state = fourdm_checkpoint_to_unet(load_checkpoint(fourdm))
        unexpected = sorted(k for k in motion_state if k not in unet.state_dict())
        if unexpected:
            raise StageError(f"{fourdm}: {len(unexpected)} keys the 4DM UNet does not have, e.g. {unexpected[:5]}")
        missing_motion = sorted(
            k for k in unet.state_dict() if k.startswith(motion_prefixes) and k not in motion_state
        )
        if missing_motion:
            raise StageError(f"{fourdm}: lacks {len(missing_motion)} motion-module keys, e.g. {missing_motion[:5]}")
        unet_state.update(motion_state)
    else:
        log.warning("no 4DM checkpoint: motion modules stay zero-initialised (ImageDream behaviour)")
        unet_state.update({k: v for k, v in unet.state_dict().items() if k.startswith(motion_prefixes)})
    load_strict(unet, unet_state, f"UNet from {imagedream}" + (f" + {fourdm}" if fourdm else ""))
    # 2. VAE from the same ImageDream file (LDM names → diffusers names).
    vae_state = ldm_vae_to_diffusers(imagedream_state, num_levels=len(vae.config.block_out_channels))
    load_strict(vae, vae_state, f"VAE from {imagedream}")
    # 3. Encoders: validated by loading them from their local folders.
    try:
        text = CLIPTextModel.from_pretrained(find_component(text_encoder, "text_encoder"), local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(find_component(text_encoder, "tokenizer"), local_files_only=True)
        vision = CLIPVisionModel.from_pretrained(find_component(image_encoder, "image_encoder"), local_files_only=True)
        processor = CLIPImageProcessorPil.from_pretrained(
            find_component(image_encoder, "feature_extractor"), local_files_only=True
        )
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises anything (SafetensorError, …)
        first = (str(err).strip().splitlines() or [""])[0]
        raise StageError(f"cannot load a CLIP component: {type(err).__name__}: {first}") from None
    if text.config.hidden_size != unet.config.context_dim:
        raise StageError(f"text encoder width {text.config.hidden_size} != UNet context {unet.config.context_dim}")
    if vision.config.hidden_size != unet.config.ip_embedding_dim:
        raise StageError(
            f"image encoder width {vision.config.hidden_size} != resampler input {unet.config.ip_embedding_dim}"
        )
    pipe = FourDMPipeline(unet, vae, official_scheduler(), text, tokenizer, vision, processor)
    # 4. Write the folder atomically.
    with staged_output_dir(output) as tmp:
        pipe.save_pretrained(tmp)
        # A marker that lets a later conversion replace this folder (staged_output_dir refuses foreign folders).
        sources = {"imagedream": Path(imagedream).name, "fourdm": Path(fourdm).name if fourdm else None}
        (tmp / "manifest.json").write_text(json.dumps({"converted_from": sources}, indent=2) + "\n")
    log.info("wrote %s", output)
    return pipe
