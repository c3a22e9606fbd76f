"""Benchmark the distill iteration's orientation pass alone: its parts, its chunk size, and its kernels.

    python benchmarks/orient_pass.py --config configs/distill.yaml --json out/orient_pass.json

The orientation term (spec §5, λ3) needs the analytic normals −∇σ/‖∇σ‖ and their gradient w.r.t. the field's
parameters: a double backward through the density network and both hash grids. On the deferred path the trainer
renders the 4 SDS views at one random timestamp without autograd (march, pruning pass, composite), then re-evaluates
the kept samples with autograd in chunks of `runtime.orient_chunk_samples` (`DeferredRender.backward`,
`with_orient=True`). This script times, on the late-training stand-in field of `benchmarks/distill_step.py` (opaque
sphere, occupancy rebuilt) at the last SDS resolution:

- `march_s`: the no-grad render (`Trainer.render_deferred(..., with_rgb=False)`);
- per chunk size: `backward_s` (the double-backward chunks), `pass_s` (march + backward, as the trainer runs it)
  and the peak memory of the pass; with `--compare-all-gradients` also the first chunk size with every gradient
  the kernels' inputs require computed (`hash_grid_triton._engine_will_run` answering yes to all), side by side;
- `single_backward_s`: the same samples re-evaluated with a plain backward (a random opacity gradient, no normals):
  the cost the pass would have without the double backward;
- a torch.profiler table of one pass (CUDA kernels by total time), printed and written to the JSON.

No 4DM is built (SDS weight 0): the orientation pass does not touch it. `--smoke` runs tiny grids on the CPU (tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.distill_step import Clock, environment, make_late_field  # noqa: E402
from stages.common.cameras import OrbitCamera  # noqa: E402
from stages.common.config import load_config, load_runtime  # noqa: E402
from stages.distill.cameras import sample_sds_views  # noqa: E402
from stages.distill.config import DistillConfig  # noqa: E402
from stages.distill.fields import hash_grid_triton as ht  # noqa: E402
from stages.distill.trainer import AnchorTarget, Trainer, build_field  # noqa: E402

NUM_FRAMES = 8
_engine_will_run = ht._engine_will_run


def build_trainer(cfg: DistillConfig, device: torch.device, smoke: bool) -> Trainer:
    weights = cfg.loss_weights.model_copy(update={"sds": 0.0, "anchor_lpips": 0.0})
    cfg = cfg.model_copy(update={"loss_weights": weights})
    torch.manual_seed(cfg.seed)
    field = build_field(cfg).to(device)
    frames = torch.rand(NUM_FRAMES, 3, 32 if smoke else 256, 32 if smoke else 256)
    anchor = AnchorTarget(frames, OrbitCamera.from_angles(0, 0.0, 0.0, cfg.cameras.radius, cfg.cameras.fov_y_deg))
    return Trainer(cfg, field, anchor, guidance=None, conditioning=None, lpips=None, device=device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="distill config (configs/distill.yaml)")
    parser.add_argument("--runtime", type=Path, default=None, help="run-time file (configs/runtime.yaml)")
    parser.add_argument("--backend", choices=["torch", "tcnn", "triton"], help="override field.backend")
    parser.add_argument("--chunks", type=int, nargs="+", default=None, help="orient_chunk_samples values")
    parser.add_argument("--size", type=int, default=None, help="render side (default: the last SDS resolution)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each timing (the pass: one more)")
    parser.add_argument(
        "--compare-all-gradients",
        action="store_true",
        help="also time the first chunk size with every gradient the inputs require computed (for scale)",
    )
    parser.add_argument("--late-field", choices=["sphere", "blob"], default="sphere")
    parser.add_argument("--json", type=Path, default=Path("out/orient_pass.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny grids on the CPU (tests only)")
    args = parser.parse_args(argv)
    config_path = args.config or REPO / ("configs/tiny/distill.yaml" if args.smoke else "configs/distill.yaml")
    runtime_path = args.runtime or REPO / ("configs/tiny/runtime.yaml" if args.smoke else "configs/runtime.yaml")
    cfg = load_config(DistillConfig, config_path)
    cfg = cfg.model_copy(update={"runtime": load_runtime(DistillConfig, runtime_path, "distill")})
    if args.backend:
        cfg = cfg.model_copy(update={"field": cfg.field.model_copy(update={"backend": args.backend})})
    device = torch.device("cpu" if args.smoke else "cuda")
    clock = Clock(device)
    trainer = build_trainer(cfg, device, args.smoke)
    late = make_late_field(trainer, args.late_field, 200.0, 0.35)
    size = args.size or cfg.sds_resolution(max(cfg.sds_resolution.milestones, default=0) + 1)
    chunks = args.chunks or [cfg.runtime.orient_chunk_samples]
    views = sample_sds_views(
        torch.Generator().manual_seed(3),
        num_views=cfg.cameras.num_views,
        elevation_min_deg=cfg.cameras.elevation_min_deg,
        elevation_max_deg=cfg.cameras.elevation_max_deg,
        radius=cfg.cameras.radius,
        fov_y_deg=cfg.cameras.fov_y_deg,
    )
    times = [float(trainer.times[3])]

    def march():
        return trainer.render_deferred(views.cameras, times, size, stratified=True, with_rgb=False, kind="orient")

    def orient_backward(render, chunk: int) -> None:
        count = (render.opacity > 0).sum().clamp(min=1)
        render.backward(lambda out, sl: out.orient.sum() / count, chunk_samples=chunk, with_orient=True)

    render = march()
    samples = render.num_samples
    rays = int(render.opacity.numel())
    result: dict = {
        **environment(device),
        "config": str(config_path),
        "hash_backend": cfg.field.backend,
        "size_px": size,
        "views": cfg.cameras.num_views,
        "rays": rays,
        "samples": samples,
        "late_field": late,
    }
    result["march_s"] = clock.time(march, args.repeats, warmup=args.warmup)
    g_opacity = torch.randn(rays, generator=torch.Generator().manual_seed(1)).to(device) * 1e-3

    def single() -> None:
        render.backward(lambda out, sl: (out.opacity * g_opacity[sl]).sum(), chunk_samples=max(chunks))
        trainer.field.zero_grad(set_to_none=True)

    result["single_backward_s"] = clock.time(single, args.repeats, warmup=args.warmup)
    result["chunks"] = []
    variants = [(chunk, True) for chunk in chunks] + [(chunks[0], False)] * args.compare_all_gradients
    for chunk, skipping in variants:
        row: dict = {"orient_chunk_samples": chunk, "num_chunks": len(render.chunks(chunk)), "skip": skipping}
        # skip False: the kernels compute every gradient their inputs require instead of asking the engine which
        # ones the pass wants (`hash_grid_triton._engine_will_run`); same results, more kernels: the skip's worth.
        ht._engine_will_run = _engine_will_run if skipping else (lambda node: True)

        def backward_only(chunk=chunk) -> None:
            orient_backward(render, chunk)
            trainer.field.zero_grad(set_to_none=True)

        def whole(chunk=chunk) -> None:
            orient_backward(march(), chunk)
            trainer.field.zero_grad(set_to_none=True)

        try:
            row["backward_s"] = clock.time(backward_only, args.repeats, warmup=args.warmup)
            clock.reset_peak()
            # one warm-up more: each march draws new samples, and the first new sample counts can compile kernels anew
            row["pass_s"] = clock.time(whole, args.repeats, warmup=args.warmup + 1)
            row.update(clock.peak())
        except torch.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            row["out_of_memory"] = str(err).splitlines()[0]
        result["chunks"].append(row)
    ht._engine_will_run = _engine_will_run

    # One profiled pass at the first chunk size: CUDA (or CPU) kernels by total time.
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        orient_backward(march(), chunks[0])
        clock.sync()
    trainer.field.zero_grad(set_to_none=True)
    key = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if device.type == "cuda":
        events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in events)
    result["profile"] = {
        "total_kernel_ms": total / 1e3,
        "top": [
            {"name": e.key[:120], "ms": getattr(e, key) / 1e3, "calls": e.count, "share": getattr(e, key) / total}
            for e in events[:25]
        ],
    }
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(result: dict) -> None:
    print(f"{result['gpu']}, torch {result['torch']}, {result['hash_backend']} grids, {result['views']} views at "
          f"{result['size_px']}²: {result['rays']:,} rays, {result['samples']:,} samples")  # fmt: skip
    print(f"no-grad render (march) {result['march_s'] * 1e3:.1f} ms; plain backward of the same samples "
          f"{result['single_backward_s'] * 1e3:.1f} ms")  # fmt: skip
    print(f"{'chunk':>9} {'chunks':>6} {'gradients':>9} {'backward ms':>11} {'pass ms':>8} {'peak GiB':>8}")
    for r in result["chunks"]:
        head = f"{r['orient_chunk_samples']:>9} {r['num_chunks']:>6} {'wanted' if r['skip'] else 'all':>9}"
        if "out_of_memory" in r:
            print(f"{head} out of memory")
            continue
        peak = f"{r['peak_allocated_gib']:>8.2f}" if "peak_allocated_gib" in r else f"{'-':>8}"
        print(f"{head} {r['backward_s'] * 1e3:>11.1f} {r['pass_s'] * 1e3:>8.1f} {peak}")
    p = result["profile"]
    print(f"kernels of one pass: {p['total_kernel_ms']:.1f} ms")
    for e in p["top"][:15]:
        print(f"  {e['ms']:>8.2f} ms {e['share']:>6.1%} ×{e['calls']:<5} {e['name']}")


if __name__ == "__main__":
    main()
