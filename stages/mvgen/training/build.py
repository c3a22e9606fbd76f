"""A 4DM built from `TrainConfig.model` (no `--weights`): its character tokenizer, the pipeline, its scheduler."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from torch import nn
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from stages.common.errors import StageError
from stages.mvgen.models import FourDMUNet
from stages.mvgen.pipeline_fourdm import FourDMPipeline, official_scheduler
from stages.mvgen.training.config import ModelConfig, TrainConfig

DTYPES = {"float16": torch.float16, "float32": torch.float32}

log = logging.getLogger(__name__)


def write_char_tokenizer(directory: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over single characters (byte alphabet, no BPE merges), written to `directory`.

    Vocabulary: the 256 byte characters of CLIP's byte encoder, the same with the end-of-word mark, then
    `<|startoftext|>` (512) and `<|endoftext|>` (513); 77 positions as CLIP.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    codes = printable + [256 + i for i in range(256 - len(printable))]
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 2 * len(chars), "<|endoftext|>": 2 * len(chars) + 1})
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def build_pipeline(config: TrainConfig, tokenizer_dir: Path) -> FourDMPipeline:
    """The untrained 4DM of `config.model` at `config.data.size_px`: UNet and VAE initialised from `config.seed`,
    CLIP encoders from `model.encoder_seed`.

    Raises:
        StageError: sizes that do not fit together (image side vs VAE and UNet levels, heads vs widths).
    """
    cfg, size_px, seed = config.model, config.data.size_px, config.seed
    factor, levels = 2 ** (len(cfg.vae.block_out_channels) - 1), len(cfg.unet.channel_mult)
    latent = size_px // factor
    if size_px % factor or latent % 2 ** (levels - 1):
        raise StageError(f"size_px {size_px} does not divide into the VAE (÷{factor}) and UNet levels ({levels})")
    if size_px % cfg.image_patch_px:
        raise StageError(f"image_patch_px {cfg.image_patch_px} does not divide size_px {size_px}")
    u, v, te, ie = cfg.unet, cfg.vae, cfg.text_encoder, cfg.image_encoder
    try:
        torch.manual_seed(seed)
        unet = FourDMUNet(
            model_channels=u.model_channels,
            channel_mult=tuple(u.channel_mult),
            num_res_blocks=u.num_res_blocks,
            attention_resolutions=tuple(u.attention_resolutions),
            num_head_channels=u.num_head_channels,
            context_dim=te.hidden_size,
            num_ip_tokens=u.num_ip_tokens,
            ip_embedding_dim=ie.hidden_size,
            resampler_depth=u.resampler_depth,
            resampler_heads=u.resampler_heads,
            resampler_dim_head=u.resampler_dim_head,
            motion_num_heads=u.motion_num_heads,
            motion_max_len=u.motion_max_len,
            norm_num_groups=u.norm_num_groups,
            sample_size=latent,
        )
        torch.manual_seed(seed + 1)
        n = len(v.block_out_channels)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            block_out_channels=list(v.block_out_channels),
            layers_per_block=v.layers_per_block,
            latent_channels=v.latent_channels,
            norm_num_groups=v.norm_num_groups,
            sample_size=size_px,
            scaling_factor=1.0,
        )
    except ValueError as err:  # GroupNorm groups, head counts
        raise StageError(f"model config: {err}") from None
    tokenizer = write_char_tokenizer(tokenizer_dir)
    torch.manual_seed(cfg.encoder_seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=te.hidden_size,
            intermediate_size=te.intermediate_size,
            num_hidden_layers=te.num_hidden_layers,
            num_attention_heads=te.num_attention_heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(cfg.encoder_seed + 1)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=ie.hidden_size,
            intermediate_size=ie.intermediate_size,
            num_hidden_layers=ie.num_hidden_layers,
            num_attention_heads=ie.num_attention_heads,
            image_size=size_px,
            patch_size=cfg.image_patch_px,
        )
    )
    processor = CLIPImageProcessor(size={"shortest_edge": size_px}, crop_size={"height": size_px, "width": size_px})
    return FourDMPipeline(unet, vae, build_scheduler(cfg), text, tokenizer, vision, processor)


def build_scheduler(cfg: ModelConfig) -> DDIMScheduler:
    """The official LDM schedule (`official_scheduler`), with the config's prediction type and, when asked, betas
    rescaled to zero terminal SNR and "trailing" timestep spacing (sampling then starts at t = 999)."""
    # The constructor, not from_config: from_config ignores keys its source config marks as defaults.
    config = {k: v for k, v in official_scheduler().config.items() if not k.startswith("_")}
    config["prediction_type"] = cfg.prediction_type
    if cfg.zero_terminal_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0)
    return DDIMScheduler(**config)


def round_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Round a frozen module's float tensors to `dtype` in place (kept in their own dtype), so training sees
    exactly the weights that ship in the `dtype` export."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.copy_(t.to(dtype).to(t.dtype))
