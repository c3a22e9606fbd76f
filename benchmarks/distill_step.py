"""Benchmark the distill iteration at the paper's configuration against its floor, measured in the same run.

    python benchmarks/distill_step.py --config configs/distill.yaml --backend triton --guidance-dtype bfloat16 \\
        --json out/distill_step.json

Full-size architectures with random weights (time and memory do not depend on the values): the dynamic NeRF of the
config (3D + 4D hash grids, 16 levels, 2^19), full-size 4DM (UNet 1.39 B, SD VAE, SD-2.1 text and ViT-H/14 image
encoders, as benchmarks/mvgen_sampling.py builds it), full-width LPIPS-VGG; 4 views × 8 frames.

Phases of the config's schedule: the steps split wherever the work of a step changes (a resolution milestone, SDS
switching on at `guidance.start_step`, a loss term switching on or off, e.g. the opacity loss at 10001); a phase
shorter than `--min-phase-steps` joins the next one. Each phase is timed at its first step (for a joined one, the
first step of the phase it joined). The paper's recipe gives 64² [0, 5000), 192² [5000, 10000), 256² with the
opacity loss [10000, 35000); the fast recipe (`configs/demo-gpu/distill.yaml`: reconstruction term, no resolution
milestones) gives one phase per SDS state. The JSON's `total_s` per variant is Σ phase steps × s/step over the
config's `num_steps` (steps only: no loading, occupancy warm-up outliers, checkpoints or export).
- The first phase runs on the blob-initialised field (a fuzzy ball: 80% of the rays cross it; ~50 kept samples per
  ray over the image, measured on CPU), the occupancy grid in its warm-up.
- Later phases run on a stand-in for a trained field, which is a surface: rays stop a few samples after entering
  it, and a large part of the image is background. `--late-field sphere` (default) stands in for it with an opaque
  sphere: the field's blob density bias becomes 200·(1 − ‖x‖/0.35) (radius 0.35: the subject covers about half of
  the 256² views at radius 1.1, fov 45°; a ray that hits keeps ~17 samples, 8 per ray over the image, measured on
  CPU), the hash grids and MLPs keep their random values (the per-sample cost is the same), and the occupancy grid
  is rebuilt for it (`--late-density`, `--late-radius` change the sphere). `--late-field blob` keeps the start
  field (the pessimistic fuzzy ball). The JSON says which, with the measured samples per ray and coverage.
As the stage does, 4DM is built only when `loss_weights.sds` > 0 and LPIPS only when `anchor_lpips` > 0; the anchor
videos are random frames at the views `cameras.anchor_view` + `extra_anchor_views` (mvgen's azimuths 90°·v) with
random masks, so the reconstruction term has its rays.

Per phase: seconds per step (the median of `--steps` steps timed one by one after `--warmup` steps; the mean and
every step's time are in the JSON too: a step that compiles a Triton kernel for a new sample-count specialisation
takes seconds once, which the median leaves out and a 35000-step run amortises), peak GPU memory of those steps
(allocated and reserved), samples per SDS ray (kept, candidates in occupied cells, evaluated by the pruning pass),
in phases with SDS, the floor = UNet forward at the SDS batch (2 CFG branches × F × (V+1) slots, guidance dtype,
no_grad) + VAE encoder forward and backward of the F·V renders at the VAE's resolution + the SDS render's forward and
backward alone (same path, random pixel gradients), and the ratio step/floor; a per-part profile of one extra step
(synchronised: its parts add up to a little more than a step). Targets (issue #10): ≤ 0.35 s/step and ≤ 1.25× the
floor at 256², peak ≤ 24 GB. Out-of-memory is caught per measurement and reported instead of a number.

`--smoke` runs the same code with tiny models on the CPU (tests; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stages.common.cameras import OrbitCamera  # noqa: E402
from stages.common.config import load_config, load_runtime  # noqa: E402
from stages.common.lpips import LPIPSVGG  # noqa: E402
from stages.distill.cameras import sample_sds_views  # noqa: E402
from stages.distill.config import DistillConfig  # noqa: E402
from stages.distill.guidance import FourDMGuidance  # noqa: E402
from stages.distill.trainer import AnchorTarget, Trainer, build_field  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TARGETS = {"s_per_step_256px": 0.35, "ratio_to_floor_256px": 1.25, "peak_reserved_gb": 24.0}
NUM_FRAMES = 8
FULL_IMAGE_PX = 256  # 4DM's resolution, the anchor videos' size


def full_size_pipeline(dtype: torch.dtype):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mvgen_sampling import build_full_size_pipeline  # noqa: PLC0415  (a sibling script, not a package)

    return build_full_size_pipeline(dtype)


def tiny_pipe(dtype: torch.dtype):
    """The tests' tiny 4DM (CPU smoke run)."""
    from tests.mvgen.tiny import tiny_pipeline  # noqa: PLC0415

    pipe = tiny_pipeline(Path(tempfile.mkdtemp(prefix="distill_step_")))
    return pipe.to(dtype=dtype)


def tiny_image_px() -> int:
    from tests.mvgen.tiny import IMAGE_PX  # noqa: PLC0415

    return IMAGE_PX


def tiny_lpips() -> LPIPSVGG:
    """The tests' narrow LPIPS-VGG (CPU smoke run)."""
    from tests.distill.tiny import TINY_VGG_WIDTHS  # noqa: PLC0415

    return LPIPSVGG(input_range="zero_to_one_unscaled", channel_norm="lpips", widths=TINY_VGG_WIDTHS)


def random_anchor(cfg: DistillConfig, frames: np.ndarray) -> AnchorTarget:
    """Anchor videos as the stage builds them from an mvgen artifact: the anchor view and the extra ones (random
    frames at mvgen's azimuths 90°·v, elevation 0) with random foreground masks."""
    cams = cfg.cameras
    views = [cams.anchor_view, *cams.extra_anchor_views]
    g = torch.Generator().manual_seed(4)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (F, 3, H, W)
    videos = torch.stack([video] + [torch.rand(video.shape, generator=g) for _ in views[1:]])  # (A, F, 3, H, W)
    masks = (torch.rand((len(views), *video.shape[:1], 1, *video.shape[2:]), generator=g) > 0.5).float()
    cameras = [OrbitCamera.from_angles(v, 90.0 * v, 0.0, cams.radius, cams.fov_y_deg) for v in views]
    return AnchorTarget(
        frames=videos[0],
        camera=cameras[0],
        extra_frames=videos[1:] if len(views) > 1 else None,
        extra_cameras=cameras[1:],
        masks=masks,
    )


def environment(device: torch.device) -> dict:
    """What a benchmark JSON records about the machine: GPU name (or a CPU smoke run), torch, CUDA, Python."""
    return {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


class Clock:
    """Wall time of a callable with the device synchronised around it; peak memory since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict[str, float]:
        if not self.cuda:
            return {}
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9,
        }

    def time(self, fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - start) / repeats


def guarded(fn: Callable[[], dict]) -> dict:
    """Run a measurement; an out-of-memory error becomes its result."""
    try:
        return fn()
    except torch.OutOfMemoryError as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"out_of_memory": str(err).splitlines()[0]}


def unet_floor(guidance: FourDMGuidance, cond, num_views: int, clock: Clock, repeats: int) -> dict:
    """The UNet forward at the SDS batch, guidance dtype, no autograd (the same shapes as FourDMGuidance)."""
    pipe, device, dtype = guidance.pipe, guidance.device, guidance.pipe.dtype
    slots, frames = num_views + 1, cond.image_tokens.shape[0]
    rows = 2 * frames * slots
    g = torch.Generator().manual_seed(0)
    channels, side = pipe.vae.config.latent_channels, guidance.latent_size

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(device, dtype)

    sample, text = rand(rows, channels, side, side), rand(rows, *cond.text.shape[1:])
    camera, tokens = rand(rows, 16), rand(rows, *cond.image_tokens.shape[1:])
    ip_latents, timestep = rand(2 * frames, channels, side, side), torch.full((rows,), 500, device=device)

    def forward() -> None:
        with torch.no_grad():
            pipe.unet(sample, timestep, text, camera, tokens, ip_latents, frames, slots)

    return {"unet_forward_s": clock.time(forward, repeats), "unet_batch": rows}


def vae_floor(guidance: FourDMGuidance, count: int, clock: Clock, repeats: int) -> dict:
    """VAE encoder forward + backward (to the images) of `count` renders at the VAE's resolution, fp32 inputs."""
    size = guidance.image_size
    x = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1)).to(guidance.device)
    x.requires_grad_(True)
    noise = guidance.posterior_noise(count, torch.Generator().manual_seed(2))
    upstream = torch.randn(noise.shape, generator=torch.Generator().manual_seed(3)).to(guidance.device)

    def forward_backward() -> None:
        z = guidance.encode_with_noise(x, noise)
        z.backward(upstream)
        x.grad = None

    return {"vae_encoder_fwd_bwd_s": clock.time(forward_backward, repeats), "vae_images": count, "vae_px": size}


def render_floor(trainer: Trainer, size: int, clock: Clock, repeats: int) -> dict:
    """The SDS render (V views × F frames at `size`) forward and backward alone, through the trainer's own path
    (direct or deferred), with fixed random pixel gradients; a scratch generator leaves the trainer's draws alone."""
    cfg, saved = trainer.config, trainer.generator
    trainer.generator = torch.Generator().manual_seed(11)
    views = sample_sds_views(
        trainer.generator,
        num_views=cfg.cameras.num_views,
        elevation_min_deg=cfg.cameras.elevation_min_deg,
        elevation_max_deg=cfg.cameras.elevation_max_deg,
        radius=cfg.cameras.radius,
        fov_y_deg=cfg.cameras.fov_y_deg,
    )
    num_rays = cfg.cameras.num_views * trainer.num_frames * size * size
    g = torch.Generator().manual_seed(12)
    g_rgb = torch.randn(num_rays, 3, generator=g).to(trainer.device) * 1e-3
    g_opacity = torch.randn(num_rays, generator=g).to(trainer.device) * 1e-3
    coverage: list[tuple[float, float]] = []
    times = trainer.times.tolist()

    def forward_backward() -> None:
        if cfg.runtime.grad_chunk_samples > 0:
            out = trainer.render_deferred(views.cameras, times, size, stratified=True, kind="floor")
            out.backward(
                lambda o, sl: (o.rgb * g_rgb[sl]).sum() + (o.opacity * g_opacity[sl]).sum(),
                chunk_samples=cfg.runtime.grad_chunk_samples,
            )
        else:
            out = trainer.render(views.cameras, times, size, stratified=True, kind="floor")
            ((out.rgb * g_rgb).sum() + (out.opacity * g_opacity).sum()).backward()
        opacity = out.opacity.detach()
        coverage.append((float((opacity > 0.5).float().mean()), float((opacity > 0.01).float().mean())))
        trainer.field.zero_grad(set_to_none=True)

    try:
        seconds = clock.time(forward_backward, repeats)
    finally:
        trainer.generator = saved
    stats = trainer.render_stats["floor"]
    return {
        "render_fwd_bwd_s": seconds,
        "coverage_opacity_gt_0.5": coverage[-1][0],
        "samples_per_ray": stats["samples"] / stats["rays"],
        "samples_per_hit_ray": stats["samples"] / max(1.0, coverage[-1][1] * stats["rays"]),
        "candidates_per_ray": stats["candidates"] / stats["rays"],
        "evaluated_per_ray": stats["evaluated"] / stats["rays"],
    }


def make_late_field(trainer: Trainer, kind: str, density: float, radius: float) -> dict:
    """Turn the trainer's field into the stand-in for a trained one (module docstring) and rebuild the occupancy grid
    for it (every cell evaluated, as in the warm-up, four times: the EMA max sees four random points per cell)."""
    if kind == "sphere":
        trainer.field.blob_density, trainer.field.blob_radius = density, radius
    occupancy, generator = trainer.occupancy, torch.Generator().manual_seed(5)
    occupancy.occupancy.zero_()
    for _ in range(4):
        occupancy.update(0, trainer._max_density, trainer.step_size, generator)
    if kind == "blob":
        return {"kind": kind, "description": "the blob-initialised start field (fuzzy ball), occupancy rebuilt"}
    described = (
        f"opaque sphere: blob density bias {density:g}·(1 − ‖x‖/{radius:g}), random grids and MLPs, occupancy rebuilt"
    )
    return {"kind": kind, "description": described, "blob_density": density, "blob_radius": radius}


def step_kind(cfg: DistillConfig, step: int) -> dict:
    """What a step computes, as far as its cost goes: the SDS render size and which terms are on."""
    w = cfg.loss_weights
    sds_on = w.sds > 0 and step >= cfg.guidance.start_step
    recon = cfg.reconstruction.rays_per_step > 0 and (
        w.reconstruction_rgb(step) > 0 or w.reconstruction_mask(step) > 0
    )
    return {
        "sds_px": cfg.sds_resolution(step),
        "sds_on": sds_on,
        "opaque_on": w.opaque(step) > 0,
        "sparsity_on": w.sparsity(step) > 0,
        "orient_on": w.orient(step) > 0,
        "reconstruction_on": recon,
    }


def schedule_phases(cfg: DistillConfig, min_steps: int) -> list[dict]:
    """The config's phases (module docstring): `[{"steps": [first, end), "timed_at": step, **step_kind}]`."""
    schedules = [
        v for v in (*cfg.guidance.__dict__.values(), *cfg.loss_weights.__dict__.values()) if hasattr(v, "end_step")
    ]
    candidates = {*cfg.sds_resolution.milestones, cfg.guidance.start_step}
    for sched in schedules:
        candidates |= {sched.start_step, sched.start_step + 1, sched.end_step, sched.end_step + 1}
    phases = [{"steps": [0, cfg.num_steps], "timed_at": 0, **step_kind(cfg, 0)}]
    for step in sorted(c for c in candidates if 0 < c < cfg.num_steps):
        kind = step_kind(cfg, step)
        if kind != {k: phases[-1][k] for k in kind}:
            phases[-1]["steps"][1] = step
            phases.append({"steps": [step, cfg.num_steps], "timed_at": step, **kind})
    merged: list[dict] = []
    for phase in phases:  # a short phase joins the next one (the last joins the one before)
        if merged and merged[-1]["steps"][1] - merged[-1]["steps"][0] < min_steps:
            phase = {**phase, "steps": [merged.pop()["steps"][0], phase["steps"][1]]}
        merged.append(phase)
    if len(merged) > 1 and merged[-1]["steps"][1] - merged[-1]["steps"][0] < min_steps:
        last = merged.pop()
        merged[-1]["steps"][1] = last["steps"][1]
    for phase in merged:
        phase["num_steps"] = phase["steps"][1] - phase["steps"][0]
    return merged


def run_phase(trainer: Trainer, phase: dict, args, clock: Clock) -> dict:
    """Warm-up steps, timed steps, one profiled step, and (with SDS) the render floor at this phase's resolution."""
    cfg, step = trainer.config, phase["timed_at"]
    size = cfg.sds_resolution(step)
    result: dict = {**phase}

    def steps() -> dict:
        trainer.step = step
        for _ in range(args.warmup):
            trainer.train_step()
        clock.reset_peak()
        clock.sync()
        times = []
        for _ in range(args.steps):  # each step timed alone (synchronised): one slow outlier shows as such
            start = time.perf_counter()
            metrics = trainer.step_tensors()
            clock.sync()
            times.append(time.perf_counter() - start)
        sds = trainer.render_stats.get("sds", {"candidates": 0, "evaluated": 0, "rays": 0})
        return {
            "s_per_step": float(np.median(times)),
            "s_per_step_mean": float(np.mean(times)),
            "step_times_s": times,
            **clock.peak(),
            "samples_per_ray": float(metrics["samples_per_ray"]),
            "candidates_per_ray": sds["candidates"] / max(1, sds["rays"]),
            "evaluated_per_ray": sds["evaluated"] / max(1, sds["rays"]),
            "orient_samples": trainer.render_stats.get("orient", {}).get("samples", 0),
            "anchor_samples": trainer.render_stats.get("anchor", {}).get("samples", 0),
            "reconstruction_samples": trainer.render_stats.get("reconstruction", {}).get("samples", 0),
        }

    def profiled_step() -> dict:
        trainer.timings = {}
        try:
            trainer.train_step()
            out = {"profile_s": dict(sorted(trainer.timings.items(), key=lambda kv: -kv[1]))}
            if args.kernel_profile:
                out["kernel_profile"] = kernel_profile(trainer, clock)
            return out
        finally:
            trainer.timings = None

    result.update(guarded(steps))
    if "out_of_memory" not in result:
        result.update(guarded(profiled_step))
    if phase["sds_on"]:
        result["render_floor"] = guarded(lambda: render_floor(trainer, size, clock, args.floor_repeats))
    return result


def kernel_profile(trainer: Trainer, clock: Clock, top: int = 30) -> dict:
    """One more (synchronised, phase-annotated) step under torch.profiler: per phase its CPU and device time, and the
    kernels (or CPU ops on the CPU) by total time."""
    cuda = torch.cuda.is_available() and trainer.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        trainer.train_step()
        clock.sync()
    events = prof.key_averages()
    device = "device_time_total" if cuda else "self_cpu_time_total"
    phases = {
        e.key.removeprefix("phase:"): {"cpu_ms": e.cpu_time_total / 1e3, "device_ms": getattr(e, device, 0) / 1e3}
        for e in events
        if e.key.startswith("phase:")
    }
    kernels = [e for e in events if not e.key.startswith("phase:") and getattr(e, device, 0) > 0]
    if cuda:
        kernels = [e for e in kernels if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: -getattr(e, device))
    total = sum(getattr(e, device) for e in kernels)
    return {
        "phases": phases,
        "kernel_total_ms": total / 1e3,
        "top": [{"name": e.key[:120], "ms": getattr(e, device) / 1e3, "calls": e.count} for e in kernels[:top]],
        "launches": sum(e.count for e in kernels),
    }


def variant_config(base: DistillConfig, args, grad_chunk: int, vae_chunk: int) -> DistillConfig:
    field = base.field.model_copy(update={"backend": args.backend} if args.backend else {})
    guidance = base.guidance.model_copy(update={"dtype": args.guidance_dtype} if args.guidance_dtype else {})
    runtime = base.runtime.model_copy(update={"grad_chunk_samples": grad_chunk, "vae_chunk": vae_chunk})
    return base.model_copy(update={"field": field, "guidance": guidance, "runtime": runtime})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="distill config (configs/distill.yaml)")
    parser.add_argument("--runtime", type=Path, default=None, help="run-time file (configs/runtime.yaml)")
    parser.add_argument("--backend", choices=["torch", "tcnn", "triton"], help="override field.backend")
    parser.add_argument("--guidance-dtype", choices=sorted(DTYPES), help="override guidance.dtype")
    parser.add_argument(
        "--grad-chunk-samples", type=int, nargs="+", help="runtime.grad_chunk_samples values (0 = direct path)"
    )
    parser.add_argument("--vae-chunk", type=int, nargs="+", help="runtime.vae_chunk values (0 = one graph)")
    parser.add_argument("--late-field", choices=["sphere", "blob"], default="sphere")
    parser.add_argument("--late-density", type=float, default=200.0, help="sphere: blob density bias λ (sharpness)")
    parser.add_argument("--late-radius", type=float, default=0.35, help="sphere: radius, world units")
    parser.add_argument("--min-phase-steps", type=int, default=50, help="a shorter phase joins the next one")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per phase first")
    parser.add_argument("--floor-repeats", type=int, default=5, help="timed repeats of each floor part")
    parser.add_argument("--json", type=Path, default=Path("out/distill_step.json"))
    parser.add_argument(
        "--kernel-profile", action="store_true", help="torch.profiler table of one more step per phase (JSON)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (tests only)")
    args = parser.parse_args(argv)
    config_path = args.config or REPO / ("configs/tiny/distill.yaml" if args.smoke else "configs/distill.yaml")
    runtime_path = args.runtime or REPO / ("configs/tiny/runtime.yaml" if args.smoke else "configs/runtime.yaml")
    base = load_config(DistillConfig, config_path)
    base = base.model_copy(update={"runtime": load_runtime(DistillConfig, runtime_path, "distill")})
    device = torch.device("cpu" if args.smoke else "cuda")
    clock = Clock(device)
    grad_chunks = args.grad_chunk_samples or [base.runtime.grad_chunk_samples]
    vae_chunks = args.vae_chunk or [base.runtime.vae_chunk]
    dtype_name = args.guidance_dtype or base.guidance.dtype
    result: dict = {
        **environment(device),
        "config": str(config_path),
        "hash_backend": args.backend or base.field.backend,
        "guidance_dtype": dtype_name,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "views_x_frames": [base.cameras.num_views, NUM_FRAMES],
        "targets": TARGETS,
    }

    # 1. 4DM (with SDS), LPIPS (with its anchor term), conditioning on random frames; the floor's UNet and VAE parts
    # (phase-independent).
    build = time.perf_counter()
    w = base.loss_weights
    guidance = conditioning = lpips = None
    size = tiny_image_px() if args.smoke else FULL_IMAGE_PX
    frames = (np.random.default_rng(0).random((NUM_FRAMES, size, size, 3)) * 255).astype(np.uint8)
    if w.sds > 0:
        pipe = tiny_pipe(DTYPES[dtype_name]) if args.smoke else full_size_pipeline(DTYPES[dtype_name])
        pipe.to(device)
        guidance = FourDMGuidance(
            pipe, guidance_scale=base.guidance.guidance_scale, std_rescale=base.guidance.std_rescale
        )
        if guidance.image_size != size:
            raise SystemExit(f"4DM works at {guidance.image_size} px, the anchor frames are {size} px")
        conditioning = guidance.prepare(
            frames, "a fox", base.guidance.negative_prompt, torch.Generator().manual_seed(0)
        )
    if w.anchor_lpips > 0:
        lpips = tiny_lpips() if args.smoke else LPIPSVGG(input_range="zero_to_one_unscaled", channel_norm="lpips")
        lpips = lpips.to(device)
    anchor = random_anchor(base, frames)
    result["build_s"] = time.perf_counter() - build
    renders = base.cameras.num_views * NUM_FRAMES
    if guidance is not None:
        result["floor_unet"] = guarded(
            lambda: unet_floor(guidance, conditioning, base.cameras.num_views, clock, args.floor_repeats)
        )
        result["floor_vae"] = guarded(lambda: vae_floor(guidance, renders, clock, args.floor_repeats))

    # 2. Each variant: a fresh field, then each phase of the schedule (the first on the start field, the others on
    # the late-field stand-in).
    phases = schedule_phases(base, args.min_phase_steps)
    result["num_steps"] = base.num_steps
    result["phases"] = phases
    result["variants"] = []
    for grad_chunk, vae_chunk in itertools.product(grad_chunks, vae_chunks):
        cfg = variant_config(base, args, grad_chunk, vae_chunk)
        torch.manual_seed(cfg.seed)
        field = build_field(cfg).to(device)
        trainer = Trainer(cfg, field, anchor, guidance=guidance, conditioning=conditioning, lpips=lpips, device=device)
        variant: dict = {
            "grad_chunk_samples": grad_chunk,
            "vae_chunk": vae_chunk,
            "early_stop_block": cfg.runtime.early_stop_block,
            "offload_encoders": cfg.runtime.offload_encoders,
            "field_parameters": sum(p.numel() for p in field.parameters()),
            "phases": [],
        }
        for index, phase in enumerate(phases):
            if index == 1:
                variant["late_field"] = make_late_field(trainer, args.late_field, args.late_density, args.late_radius)
            measured = run_phase(trainer, phase, args, clock)
            if phase["sds_on"]:
                add_floor(measured, result)
            variant["phases"].append(measured)
        times = [p.get("s_per_step") for p in variant["phases"]]
        variant["total_s"] = (
            sum(p["num_steps"] * t for p, t in zip(variant["phases"], times, strict=True))
            if None not in times
            else None
        )
        result["variants"].append(variant)
        del trainer, field
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def add_floor(phase: dict, result: dict) -> None:
    """floor = UNet forward + VAE encoder fwd/bwd + this phase's render fwd/bwd; ratio = step / floor."""
    parts = [
        result["floor_unet"].get("unet_forward_s"),
        result["floor_vae"].get("vae_encoder_fwd_bwd_s"),
        phase["render_floor"].get("render_fwd_bwd_s"),
    ]
    if all(p is not None for p in parts):
        phase["floor_s"] = sum(parts)
        if "s_per_step" in phase:
            phase["ratio_to_floor"] = phase["s_per_step"] / phase["floor_s"]


def print_table(result: dict) -> None:
    def fmt(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    print(f"{result['gpu']} | torch {result['torch']} | CUDA {result['cuda']} | backend {result['hash_backend']}")
    if "floor_unet" in result:
        print(f"guidance {result['guidance_dtype']} | UNet fwd {fmt(result['floor_unet'].get('unet_forward_s'))} s")
        print(f"VAE encoder fwd+bwd {fmt(result['floor_vae'].get('vae_encoder_fwd_bwd_s'))} s")
    head = (
        f"{'grad_chunk':>10} {'vae_chunk':>9} {'phase (steps, px, terms)':<34} {'s/step':>7} {'floor':>7} "
        f"{'render':>7} {'ratio':>6} {'peak GiB':>8} {'resv GB':>8} {'smp/ray':>7} {'eval/ray':>8} {'cover':>6}"
    )
    print(head)
    for v in result["variants"]:
        for p in v["phases"]:
            rf = p.get("render_floor", {})
            step_s = "OOM" if "out_of_memory" in p else fmt(p.get("s_per_step"))
            render_s = "OOM" if "out_of_memory" in rf else fmt(rf.get("render_fwd_bwd_s"))
            terms = "+".join(k.removesuffix("_on") for k in ("sds_on", "opaque_on", "reconstruction_on") if p[k])
            label = f"{p['steps'][0]}-{p['steps'][1]} {p['sds_px']}² {terms or '-'}"
            print(
                f"{v['grad_chunk_samples']:>10} {v['vae_chunk']:>9} {label:<34} {step_s:>7} "
                f"{fmt(p.get('floor_s')):>7} {render_s:>7} {fmt(p.get('ratio_to_floor'), '.2f'):>6} "
                f"{fmt(p.get('peak_allocated_gib'), '.1f'):>8} {fmt(p.get('peak_reserved_gb'), '.1f'):>8} "
                f"{fmt(p.get('samples_per_ray'), '.1f'):>7} {fmt(p.get('evaluated_per_ray'), '.1f'):>8} "
                f"{fmt(rf.get('coverage_opacity_gt_0.5'), '.2f'):>6}"
            )
            if "profile_s" in p:
                print("    profile: " + ", ".join(f"{k} {s:.3f}" for k, s in p["profile_s"].items()))
        print(f"    {result['num_steps']} steps: Σ phase steps × s/step = {fmt(v['total_s'], '.1f')} s")
    print(
        f"targets at 256²: ≤ {TARGETS['s_per_step_256px']} s/step, ≤ {TARGETS['ratio_to_floor_256px']}× floor, "
        f"peak reserved ≤ {TARGETS['peak_reserved_gb']} GB"
    )


if __name__ == "__main__":
    main()
