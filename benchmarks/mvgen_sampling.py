"""Benchmark 4DM sampling at the paper's size against its floor, the bare UNet forward, in one run.

    python benchmarks/mvgen_sampling.py --steps 100 --dtype float32 --json out/mvgen_sampling.json

Full-size architectures with random weights (timing does not depend on the values): FourDMUNet (1.39 B),
SD VAE, SD-2.1 text encoder and CLIP ViT-H/14 vision tower configs. Batch = 2 CFG branches × 8 frames × 5 slots
at 32² latents (256² images). Reports seconds per sample, per step, the bare-UNet floor, their ratio, and peak
GPU memory; prints a table and writes JSON with the GPU name and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
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

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def char_tokenizer(tmp: Path) -> CLIPTokenizer:
    """A character-level stand-in tokenizer (the real SD-2.1 vocabulary is a download); 77 tokens either way."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.mvgen.tiny import write_tiny_tokenizer

    return write_tiny_tokenizer(tmp)


def cuda_time(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def build_full_size_pipeline(dtype: torch.dtype = torch.float32) -> FourDMPipeline:
    """FourDM at the official sizes with random weights (seeded): UNet, SD VAE, SD-2.1 text encoder, ViT-H/14.

    Shared with benchmarks/distill_step.py; the tokenizer is a character-level stand-in (77 tokens either way).
    """
    torch.manual_seed(0)
    unet = FourDMUNet()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            projection_dim=1024,
            hidden_act="gelu",
        )
    )
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
        )
    )
    tmp = Path("out/_tok")
    tokenizer = char_tokenizer(tmp)
    text.resize_token_embeddings(len(tokenizer))
    return FourDMPipeline(unet, sd_vae(), official_scheduler(), text, tokenizer, vision, CLIPImageProcessor()).to(
        dtype=dtype
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--floor-repeats", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true", help="UNet and VAE in channels-last layout")
    parser.add_argument("--json", type=Path, default=Path("out/mvgen_sampling.json"))
    args = parser.parse_args()
    dtype, device = DTYPES[args.dtype], torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the official demo's precision)
    torch.backends.cudnn.allow_tf32 = False

    # 1. Full-size components with random weights.
    pipe = build_full_size_pipeline(dtype)
    unet = pipe.unet
    pipe.to(device, dtype)
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    images = (np.random.default_rng(0).random((args.frames, 256, 256, 3)) * 255).astype(np.uint8)

    # 2. Floor: the bare UNet forward at the sampling batch (2 branches × F × 5 slots), same inputs every call.
    rows = 2 * args.frames * 5
    x = torch.randn(rows, 4, 32, 32, device=device, dtype=dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.randn(rows, 77, 1024, device=device, dtype=dtype)
    cam = torch.randn(rows, 16, device=device, dtype=dtype)
    ip = torch.randn(rows, 257, 1280, device=device, dtype=dtype)
    ip_lat = torch.randn(2 * args.frames, 4, 32, 32, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    with torch.no_grad():

        def step() -> None:
            unet(x, t, ctx, cam, ip, ip_lat, args.frames, 5)

        cuda_time(step, 2)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        floor = cuda_time(step, args.floor_repeats)
        floor_peak = torch.cuda.max_memory_allocated()

    # 3. Full sample: encoders, VAE encode, `steps` CFG steps, VAE decode.
    pipe(images[:2], "a fox", num_inference_steps=2, generator=torch.Generator(device).manual_seed(0))  # warm-up
    torch.cuda.reset_peak_memory_stats()
    sample_s = cuda_time(
        lambda: pipe(
            images, "a fox", num_inference_steps=args.steps, generator=torch.Generator(device).manual_seed(0)
        ),
        1,
    )
    peak = torch.cuda.max_memory_allocated()

    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "steps": args.steps,
        "frames": args.frames,
        "unet_batch": rows,
        "unet_forward_s": floor,
        "sample_s": sample_s,
        "sample_per_step_s": sample_s / args.steps,
        "ratio_sample_vs_steps_x_unet": sample_s / (args.steps * floor),
        "target_ratio": 1.15,
        "peak_mem_gib_sample": peak / 2**30,
        "peak_mem_gib_unet_forward": floor_peak / 2**30,
    }
    for k, v in result.items():
        print(f"{k:<32}{v:.4f}" if isinstance(v, float) else f"{k:<32}{v}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
