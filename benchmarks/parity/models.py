"""Tiny seeded models built with the official classes, and ours made from their weights through our converter.

One `ModelPair` holds both sides of every compared network:
- official: `LatentDiffusionInterface` (4DM `MultiViewUNetModel` with motion modules, LDM `AutoencoderKL`,
  `FrozenOpenCLIPEmbedder` with `layer="penultimate"` and `ip_mode="local_resample"`) built from dict configs
  with the official `instantiate_from_config`, on a tiny OpenCLIP architecture registered with open_clip;
- ours: `stages.mvgen.conversion.convert` run on files written in the official formats (an ImageDream-style
  checkpoint with `model.diffusion_model.*` in ImageDream indexing and `vae_model.*`, a `4dm.ckpt` with the
  `module.`-prefixed motion modules, and Hugging Face CLIP folders), then `load_fourdm`.

The OpenCLIP → Hugging Face CLIP key mapping here stands in for the HF exports that users download
(`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, `stabilityai/stable-diffusion-2-1-base/text_encoder`): our converter reads
those folders as they are. The text encoder keeps the first L−1 OpenCLIP blocks and `ln_final`, as SD 2.x's
export does (the "penultimate" layer).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from dataclasses import dataclass
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

from benchmarks.parity.official import Official
from stages.mvgen import FourDMPipeline, load_fourdm
from stages.mvgen.conversion.convert import convert, sd_vae
from stages.mvgen.conversion.keys import fourdm_to_imagedream_unet, index_renames
from stages.mvgen.models import FourDMUNet

__all__ = ["ModelPair", "build_pair", "TINY", "open_clip_vision_to_hf", "open_clip_text_to_hf"]

ARCH = "fourd-parity-tiny"
LDM = "threestudio.models.imagedream.imagedream.ldm"
TINY = dict(
    image_px=16,  # VAE input; one downsampling → 8×8 latents
    context_dim=32,  # text width = UNet context
    vision_width=1280,  # the official resampler's input width is hard-coded to 1280
    vision_layers=3,
    text_layers=3,
    clip_image_px=32,
    num_ip_tokens=4,
)
OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {
        "image_size": TINY["clip_image_px"],
        "layers": TINY["vision_layers"],
        "width": TINY["vision_width"],
        "head_width": 640,
        "mlp_ratio": 0.25,
        "patch_size": 8,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": TINY["context_dim"],
        "heads": 4,
        "layers": TINY["text_layers"],
    },
}
UNET_KWARGS = dict(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(1, 2),
    num_head_channels=16,
    context_dim=TINY["context_dim"],
    num_ip_tokens=TINY["num_ip_tokens"],
    ip_embedding_dim=TINY["vision_width"],
    resampler_depth=4,
    resampler_heads=12,
    resampler_dim_head=64,
    motion_num_heads=4,
    motion_max_len=16,
    sample_size=TINY["image_px"] // 2,
)
"""Our FourDMUNet at the same tiny size (resampler as the official hard-codes it: depth 4, 12 heads of 64)."""


def _official_unet_config() -> dict:
    kw = UNET_KWARGS
    return {
        "target": f"{LDM}.modules.diffusionmodules.openaimodel.MultiViewUNetModel",
        "params": dict(
            image_size=kw["sample_size"],
            in_channels=4,
            out_channels=4,
            model_channels=kw["model_channels"],
            attention_resolutions=list(kw["attention_resolutions"]),
            num_res_blocks=kw["num_res_blocks"],
            channel_mult=list(kw["channel_mult"]),
            num_head_channels=kw["num_head_channels"],
            use_spatial_transformer=True,
            use_linear_in_transformer=True,
            transformer_depth=1,
            context_dim=kw["context_dim"],
            use_checkpoint=False,
            legacy=False,
            camera_dim=16,
            with_ip=True,
            ip_dim=kw["num_ip_tokens"],
            ip_mode="local_resample",
            use_motion_module=True,
            motion_module_type="Vanilla",
            motion_module_kwargs=dict(
                num_attention_heads=kw["motion_num_heads"],
                num_transformer_block=1,
                attention_block_types=["Temporal_Self", "Temporal_Self"],
                temporal_position_encoding=True,
                temporal_position_encoding_max_len=kw["motion_max_len"],
                temporal_attention_dim_div=1,
            ),
        ),
    }


VAE_DDCONFIG = dict(
    double_z=True,
    z_channels=4,
    resolution=TINY["image_px"],
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
)


@dataclass
class ModelPair:
    """Both sides: `official` (LatentDiffusionInterface), `ours` (FourDMPipeline loaded from the converted folder)."""

    official: torch.nn.Module
    ours: FourDMPipeline
    workdir: Path


def _randomize_zeros(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.2) -> None:
    """Zero-initialised layers (output convs, motion `proj_out`) get random values so that every path counts."""
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def open_clip_vision_to_hf(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """OpenCLIP `VisionTransformer` state → HF `CLIPVisionModel` state (as LAION's HF export names it)."""
    s = visual.state_dict()
    out = {
        "vision_model.embeddings.patch_embedding.weight": s["conv1.weight"],
        "vision_model.embeddings.class_embedding": s["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": s["positional_embedding"],
        "vision_model.pre_layrnorm.weight": s["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": s["ln_pre.bias"],
        "vision_model.post_layernorm.weight": s["ln_post.weight"],
        "vision_model.post_layernorm.bias": s["ln_post.bias"],
    }
    out.update(_blocks(s, "transformer.resblocks", "vision_model.encoder.layers", len(visual.transformer.resblocks)))
    return out


def open_clip_text_to_hf(model: torch.nn.Module, num_layers: int) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower → HF `CLIPTextModel` with the first `num_layers` blocks and `ln_final` (SD 2.x export)."""
    s = model.state_dict()
    out = {
        "text_model.embeddings.token_embedding.weight": s["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": s["positional_embedding"],
        "text_model.final_layer_norm.weight": s["ln_final.weight"],
        "text_model.final_layer_norm.bias": s["ln_final.bias"],
    }
    out.update(_blocks(s, "transformer.resblocks", "text_model.encoder.layers", num_layers))
    return out


def _blocks(s: dict, src: str, dst: str, count: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(count):
        a, b = f"{src}.{i}", f"{dst}.{i}"
        q, k, v = s[f"{a}.attn.in_proj_weight"].chunk(3)
        qb, kb, vb = s[f"{a}.attn.in_proj_bias"].chunk(3)
        out.update(
            {
                f"{b}.self_attn.q_proj.weight": q,
                f"{b}.self_attn.k_proj.weight": k,
                f"{b}.self_attn.v_proj.weight": v,
                f"{b}.self_attn.q_proj.bias": qb,
                f"{b}.self_attn.k_proj.bias": kb,
                f"{b}.self_attn.v_proj.bias": vb,
                f"{b}.self_attn.out_proj.weight": s[f"{a}.attn.out_proj.weight"],
                f"{b}.self_attn.out_proj.bias": s[f"{a}.attn.out_proj.bias"],
                f"{b}.layer_norm1.weight": s[f"{a}.ln_1.weight"],
                f"{b}.layer_norm1.bias": s[f"{a}.ln_1.bias"],
                f"{b}.layer_norm2.weight": s[f"{a}.ln_2.weight"],
                f"{b}.layer_norm2.bias": s[f"{a}.ln_2.bias"],
                f"{b}.mlp.fc1.weight": s[f"{a}.mlp.c_fc.weight"],
                f"{b}.mlp.fc1.bias": s[f"{a}.mlp.c_fc.bias"],
                f"{b}.mlp.fc2.weight": s[f"{a}.mlp.c_proj.weight"],
                f"{b}.mlp.fc2.bias": s[f"{a}.mlp.c_proj.bias"],
            }
        )
    return out


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an HF-named CLIP state, with or without the `text_model.`/`vision_model.` prefix the class uses."""
    keys = set(model.state_dict())
    if not keys & set(state):
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"CLIP mapping: missing {missing}, unexpected {unexpected}")


def write_sd2_tokenizer(directory: Path) -> CLIPTokenizer:
    """The SD 2.x tokenizer (OpenAI CLIP BPE, pad "!" = id 0, 77 tokens) from the BPE file open_clip ships."""
    import open_clip.tokenizer as oc_tokenizer

    simple = oc_tokenizer.SimpleTokenizer()
    with gzip.open(oc_tokenizer.default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    directory.mkdir(parents=True, exist_ok=True)
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # open_clip ≥ 2.24 names
    vocab = {specials.get(k, k): v for k, v in simple.encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), pad_token="!", model_max_length=77
    )
    tok.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)


def build_pair(off: Official, seed: int = 0) -> ModelPair:
    """Build the official tiny model (seeded), write its weights in the official formats, convert them with our
    converter and load the result (module docstring)."""
    import open_clip

    open_clip.factory._MODEL_CONFIGS[ARCH] = OPEN_CLIP_CONFIG
    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    config = {
        "unet_config": _official_unet_config(),
        "vae_config": {
            "target": f"{LDM}.models.autoencoder.AutoencoderKL",
            "params": {"embed_dim": 4, "ddconfig": VAE_DDCONFIG, "lossconfig": {"target": "torch.nn.Identity"}},
        },
        "clip_config": {
            "target": f"{LDM}.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {
                "arch": ARCH,
                "version": None,
                "device": "cpu",
                "freeze": True,
                "layer": "penultimate",
                "ip_mode": "local_resample",
            },
        },
    }
    official = off.interface.LatentDiffusionInterface(
        linear_start=0.00085,
        linear_end=0.0120,
        timesteps=1000,
        scale_factor=0.18215,
        parameterization="eps",
        **config,
    ).eval()
    _randomize_zeros(official.model.diffusion_model, g)
    # The official CLIP towers start with tiny random projections; scale them up so every token matters.
    with torch.no_grad():
        official.clip_model.model.visual.class_embedding.normal_(0, 1, generator=g)
        official.clip_model.model.visual.positional_embedding.normal_(0, 1, generator=g)
    official.requires_grad_(False)

    workdir = Path(tempfile.mkdtemp(prefix="fourd-parity-"))
    # 1. Official-format checkpoints: ImageDream (UNet in ImageDream indexing + VAE) and 4dm.ckpt (motion modules).
    ours_layout = FourDMUNet(use_motion_module=True, **UNET_KWARGS)
    motion = ours_layout.motion_module_names()
    unet_state = official.model.diffusion_model.state_dict()
    imagedream = fourdm_to_imagedream_unet(unet_state, motion, index_renames(ours_layout))
    imagedream.update({k: v for k, v in official.state_dict().items() if k.startswith("vae_model.")})
    torch.save(imagedream, workdir / "sd-v2.1-base-4view-ipmv.pt")
    fourdm = {"module." + k: v for k, v in unet_state.items() if any(k.startswith(p + ".") for p in motion)}
    torch.save({"state_dict": fourdm}, workdir / "4dm.ckpt")
    # 2. HF CLIP folders (what users download), from the official OpenCLIP towers.
    clip = official.clip_model.model
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TINY["context_dim"],
            intermediate_size=4 * TINY["context_dim"],
            num_hidden_layers=TINY["text_layers"] - 1,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        )
    )
    _load(text, open_clip_text_to_hf(clip, TINY["text_layers"] - 1))
    text.save_pretrained(workdir / "sd21" / "text_encoder")
    write_sd2_tokenizer(workdir / "sd21" / "tokenizer")
    vcfg = OPEN_CLIP_CONFIG["vision_cfg"]
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=vcfg["width"],
            intermediate_size=int(vcfg["width"] * vcfg["mlp_ratio"]),
            num_hidden_layers=vcfg["layers"],
            num_attention_heads=vcfg["width"] // vcfg["head_width"],
            image_size=vcfg["image_size"],
            patch_size=vcfg["patch_size"],
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        )
    )
    _load(vision, open_clip_vision_to_hf(clip.visual))
    vision.save_pretrained(workdir / "clip" / "image_encoder")
    size = vcfg["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        workdir / "clip" / "feature_extractor"
    )
    # 3. Our converter, then our loader.
    convert(
        imagedream=workdir / "sd-v2.1-base-4view-ipmv.pt",
        fourdm=workdir / "4dm.ckpt",
        text_encoder=workdir / "sd21",
        image_encoder=workdir / "clip",
        output=workdir / "fourdm",
        unet=FourDMUNet(use_motion_module=True, **UNET_KWARGS),
        vae=sd_vae(block_out_channels=(32, 64), layers_per_block=1),
    )
    ours = load_fourdm(workdir / "fourdm")
    ours.vae.config.sample_size = TINY["image_px"]
    return ModelPair(official=official, ours=ours, workdir=workdir)
