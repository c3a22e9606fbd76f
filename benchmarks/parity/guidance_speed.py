"""Time the official 4D-aware SDS guidance step beside ours: full size, random weights, one GPU, one process.

    python -m benchmarks.parity.guidance_speed --official-src PATH --json out/guidance_speed.json
    python -m benchmarks.parity.guidance_speed --official-src PATH --smoke ...   # the parity tiny pair, CPU (tests)

The step timed on each side is what one distill iteration asks of its guidance: 8 frames × 4 views of renders at
`--render-px` (256: the last phase) → the SDS loss (VAE encode, noise, UNet with CFG over 2 × 8 × 5 slots, x0
reconstruction with std rescale) → its gradient w.r.t. the renders. The input frames condition both sides.
- official: `MultiviewVideoDiffusionGuidance.__call__` (threestudio/models/guidance, imported from `--official-src`
  as benchmarks/parity does, never copied) on `LatentDiffusionInterface` built from the official
  `sd_v2_base_ipmv.yaml` with random weights (OpenCLIP ViT-H-14 with `version: None`: no download), set up as its
  `configure()` does (VAE in fp16), run under fp16 autocast: the official config trains with `precision: 16-mixed`.
  Its cameras come from the official multi-view sampler (`pieces.official_cameras`).
- ours: `FourDMGuidance` on the full-size FourDMPipeline (benchmarks/mvgen_sampling.py) in `--ours-dtype`
  (bfloat16, configs/distill.yaml's `guidance.dtype`).
The official attention calls xformers (a CUDA wheel pinned to torch 2.0, absent there): the parity stand-in is
replaced by PyTorch's fused `scaled_dot_product_attention` on CUDA (the same math, flash kernels as xformers'); the
JSON lists every stand-in. Per side: median and mean seconds of `--steps` steps after `--warmup`, each
synchronised; peak GPU memory of those steps; the ratio official / ours. The official field (tiny-cuda-nn hash
grids) and renderer (nerfacc) are not timed here: both are CUDA extensions built from source (PERFORMANCE.md says
why they do not fit one device call).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.parity.official import STUBS, load_official, prepare_torchvision  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NUM_FRAMES, NUM_VIEWS, TIMESTEP = 8, 4, 500
PROMPT, NEGATIVE = "a fox running", "ugly, bad anatomy, blurry"


def official_full_size(off, device: torch.device) -> torch.nn.Module:
    """The official LatentDiffusionInterface from its own config file, random weights, on `device`."""
    import yaml

    path = off.src / "threestudio/models/imagedream/imagedream/configs/sd_v2_base_ipmv.yaml"
    params = yaml.safe_load(path.read_text())["model"]["params"]
    clip = params["clip_config"].setdefault("params", {})
    clip.update(version=None, device=str(device))  # random OpenCLIP ViT-H-14, nothing downloaded
    torch.manual_seed(0)
    model = off.interface.LatentDiffusionInterface(**params)  # built on the CPU, as the official code does
    return model.eval().requires_grad_(False).to(device)


class _Fp32Torch(types.ModuleType):
    """`torch` for the official guidance module on the CPU: float16 (its VAE input cast) is float32 there."""

    def __getattr__(self, name: str):  # noqa: ANN204
        return torch.float32 if name == "float16" else getattr(torch, name)


def sdpa_attention(q, k, v, attn_bias=None, op=None):  # noqa: ANN001, ANN201 (xformers' signature)
    """xformers' `memory_efficient_attention` for (B, N, D) inputs without bias, by PyTorch's fused attention
    (flash / memory-efficient kernels on CUDA), as fast as the xformers build the official code pins."""
    if attn_bias is not None:
        raise NotImplementedError("the official code never passes attn_bias")
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def official_step(
    off, model: torch.nn.Module, frames: np.ndarray, render_px: int, image_px: int, device: torch.device, autocast
):
    """A callable that runs the official guidance once on fresh random renders and back-propagates its loss."""
    from benchmarks.parity.pieces import official_cameras, official_guidance, official_prompt_output

    cls = off.guidance.MultiviewVideoDiffusionGuidance
    # configure() without its checkpoint loading: the same attributes, the VAE in fp16 as configure() sets it (on
    # the CPU, which has no fp16 convolutions, the guidance's fp16 casts become fp32 instead).
    if device.type == "cuda":
        model.vae_model.to(torch.float16)
    else:
        off.guidance.torch = _Fp32Torch("torch")
    fake = official_guidance(
        off, model, image_px, alphas=model.alphas_cumprod.to(device), min_step=20, max_step=980, device=device
    )
    with torch.no_grad(), autocast():
        text = model.clip_model([PROMPT, NEGATIVE])
    prompt_utils = official_prompt_output(off, text, frames)
    cams = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in official_cameras(off, 0).items()}
    count = NUM_FRAMES * NUM_VIEWS
    background = torch.ones(count, render_px, render_px, 3, device=device)

    def step() -> None:
        rgb = torch.rand(count, render_px, render_px, 3, device=device, requires_grad=True)
        with autocast():
            out = cls.__call__(
                fake,
                rgb,
                prompt_utils,
                cams["elevation"],
                cams["azimuth"],
                cams["camera_distances"],
                cams["c2w"].clone(),
                rgb_as_latents=False,
                timestep=TIMESTEP,
                comp_rgb_bg=background,
                frame_idx=0,
                stage_one=False,
            )
        out["loss_sds"].backward()

    return step


def ours_step(pipe, frames: np.ndarray, render_px: int, device: torch.device):
    """A callable that runs our guidance once on fresh random renders and back-propagates its loss."""
    from stages.distill.guidance import FourDMGuidance

    guidance = FourDMGuidance(pipe, guidance_scale=5.0, std_rescale=0.2)
    cond = guidance.prepare(frames, PROMPT, NEGATIVE, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)

    def step() -> None:
        rgb = torch.rand(NUM_FRAMES, NUM_VIEWS, 3, render_px, render_px, device=device, requires_grad=True)
        result = guidance(
            rgb,
            cond,
            azimuths_deg=[0.0, 90.0, 180.0, 270.0],
            elevation_deg=0.0,
            min_step=TIMESTEP,
            max_step=TIMESTEP,
            generator=generator,
        )
        result.loss.backward()

    return step


def measure(step, device: torch.device, steps: int, warmup: int) -> dict:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    out = {"s_per_step": float(np.median(times)), "s_per_step_mean": float(np.mean(times)), "step_times_s": times}
    if cuda:
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-src", type=Path, required=True, help="a checkout of aejion/4Diffusion")
    parser.add_argument("--render-px", type=int, default=256, help="render side (the SDS phase's resolution)")
    parser.add_argument("--ours-dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("out/guidance_speed.json"))
    parser.add_argument("--smoke", action="store_true", help="the parity tiny pair on the CPU (tests only)")
    args = parser.parse_args(argv)
    prepare_torchvision()
    off = load_official(args.official_src)
    device = torch.device("cpu" if args.smoke else "cuda")
    if "xformers.ops" in STUBS and device.type == "cuda":  # the parity stand-in is exact but naive: use SDPA here
        sys.modules["xformers.ops"].memory_efficient_attention = sdpa_attention
    result: dict = {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "views_x_frames": [NUM_VIEWS, NUM_FRAMES],
        "render_px": args.render_px,
        "timestep": TIMESTEP,
        "official_precision": "float32" if args.smoke else "16-mixed (fp16 autocast; VAE fp16)",
        "ours_dtype": args.ours_dtype,
        "official_stand_ins": dict(STUBS),
    }
    if args.smoke:
        from benchmarks.parity.models import TINY, build_pair

        pair = build_pair(off)
        official_model, pipe, image_px = pair.official, pair.ours, TINY["image_px"]
        autocast = torch.autocast("cpu", enabled=False)
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from mvgen_sampling import build_full_size_pipeline  # noqa: PLC0415 (a sibling script, not a package)

        build = time.perf_counter()
        official_model = official_full_size(off, device)
        pipe = build_full_size_pipeline(DTYPES[args.ours_dtype]).to(device)
        image_px = 256
        result["build_s"] = time.perf_counter() - build
        autocast = torch.autocast("cuda", dtype=torch.float16)
    pipe.to(dtype=DTYPES[args.ours_dtype])
    frames = (np.random.default_rng(0).random((NUM_FRAMES, image_px, image_px, 3)) * 255).astype(np.uint8)
    render_px = min(args.render_px, image_px)
    result["render_px"] = render_px
    result["official"] = measure(
        official_step(off, official_model, frames, render_px, image_px, device, lambda: autocast),
        device,
        args.steps,
        args.warmup,
    )
    result["ours"] = measure(ours_step(pipe, frames, render_px, device), device, args.steps, args.warmup)
    result["ratio_official_to_ours"] = result["official"]["s_per_step"] / result["ours"]["s_per_step"]
    print(
        f"{result['gpu']} | guidance step, {NUM_VIEWS} views × {NUM_FRAMES} frames at {render_px}²: official "
        f"{result['official']['s_per_step']:.3f} s ({result['official_precision']}), ours "
        f"{result['ours']['s_per_step']:.3f} s ({args.ours_dtype}); official / ours "
        f"{result['ratio_official_to_ours']:.2f}×; peak GiB official "
        f"{result['official'].get('peak_allocated_gib', 0):.1f}, "
        f"ours {result['ours'].get('peak_allocated_gib', 0):.1f}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
