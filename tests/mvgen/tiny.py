"""Tiny real components of a FourDM pipeline, seeded: the real classes at sizes that run in milliseconds on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from stages.mvgen.conversion.convert import sd_vae
from stages.mvgen.models import FourDMUNet
from stages.mvgen.pipeline_fourdm import FourDMPipeline, official_scheduler

IMAGE_PX = 16  # tiny VAE halves once → 8×8 latents
CONTEXT = 32
VISION = 32


def tiny_unet(seed: int = 0, use_motion_module: bool = True, **overrides) -> FourDMUNet:
    torch.manual_seed(seed)
    kwargs = dict(
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2),
        num_head_channels=16,
        context_dim=CONTEXT,
        num_ip_tokens=4,
        ip_embedding_dim=VISION,
        resampler_depth=1,
        resampler_heads=2,
        resampler_dim_head=16,
        motion_num_heads=4,
        motion_max_len=16,
        use_motion_module=use_motion_module,
        sample_size=IMAGE_PX // 2,
    )
    kwargs.update(overrides)
    return FourDMUNet(**kwargs)


def randomize_zero_layers(module: torch.nn.Module, seed: int = 1, scale: float = 0.2) -> None:
    """Give zero-initialised outputs (proj_out, conv_out, ResBlock out convs) random values, so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def write_tiny_tokenizer(directory: Path) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (byte alphabet, no merges) written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 2 * len(chars), "<|endoftext|>": 2 * len(chars) + 1})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def tiny_pipeline(tmp: Path, seed: int = 0) -> FourDMPipeline:
    unet = tiny_unet(seed)
    randomize_zero_layers(unet, seed + 1)
    torch.manual_seed(seed + 2)
    vae = sd_vae(block_out_channels=(32, 64), layers_per_block=1)
    torch.manual_seed(seed + 3)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=CONTEXT,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    torch.manual_seed(seed + 4)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=VISION,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        )
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tokenizer = write_tiny_tokenizer(tmp / "tokenizer_src")
    return FourDMPipeline(unet, vae, official_scheduler(), text, tokenizer, vision, processor)
