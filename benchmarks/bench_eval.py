"""Benchmark the eval metrics at production shapes: seconds per subject for each metric, and the whole stage.

    python benchmarks/bench_eval.py --device cpu --repeats 3 --json out/bench_eval.json

Networks are the real architectures (CLIP ViT-B/32 image tower, VGG16 + LPIPS heads, InceptionI3d) with random
weights, so the timings are those of the real checkpoints; the metric values are meaningless. Prints a table
and writes JSON (machine, versions, each figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stages.common.config import load_config
from stages.common.devices import resolve_device
from stages.common.lpips import LPIPSVGG
from stages.eval import EvalConfig, run
from stages.eval.metrics.clip_similarity import ClipImageEncoder
from stages.eval.metrics.fvd import compute_i3d_features, prepare_clip
from stages.eval.metrics.inception_i3d import InceptionI3d
from stages.eval.metrics.psnr_ssim import compute_psnr, compute_ssim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test builders make the tiny artifacts
from tests.eval.builders import make_mvgen, make_render, object_frames  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/eval.yaml"))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size-px", type=int, default=256, help="side of the predicted and GT frames")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("out/bench_eval.json"))
    args = parser.parse_args()
    os.environ["FOURD_TRACKING"] = "off"
    config = load_config(EvalConfig, args.config).model_copy(update={"device": args.device})
    device = resolve_device(config.device)
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    n = args.views * args.frames
    s = config.image_size_px
    images = np.random.default_rng(0).integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    clip = ClipImageEncoder(
        CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512)), CLIPImageProcessorPil(), device
    )  # defaults = ViT-B/32
    lpips = LPIPSVGG(input_range="minus_one_to_one", channel_norm="torchmetrics").to(device)
    i3d = InceptionI3d().to(device).eval()
    unit = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    clips = [
        prepare_clip(images[v * args.frames : (v + 1) * args.frames], config.fvd_size_px, config.fvd_min_frames)
        for v in range(args.views)
    ]

    def run_lpips():
        with torch.no_grad():
            for i in range(0, n, config.batch_size):
                lpips(unit[i : i + config.batch_size] * 2 - 1, unit[i : i + config.batch_size].flip(0) * 2 - 1)

    figures = {
        "psnr_ssim_s": timed(
            lambda: (compute_psnr(unit, unit.flip(0)), compute_ssim(unit, unit.flip(0))), args.repeats
        ),
        "clip_embed_s": timed(lambda: clip.embed(images, config.batch_size), args.repeats),
        "lpips_s": timed(run_lpips, args.repeats),
        "i3d_features_s": timed(lambda: compute_i3d_features(i3d, clips, device), args.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = list(range(0, 3 * args.frames, 3))
        frames = object_frames(args.views, source, size=args.size_px)
        make_mvgen(Path(tmp) / "p", frames, source_indices=source)
        make_render(Path(tmp) / "g", frames, source_indices=source)
        figures["stage_no_weights_s"] = timed(
            lambda: run(
                config, prediction_dir=Path(tmp) / "p", ground_truth_dir=Path(tmp) / "g", output_dir=Path(tmp) / "o"
            ),
            args.repeats,
        )
    result = {
        "views": args.views,
        "frames": args.frames,
        "image_size_px": s,
        "fvd_clip": [config.fvd_min_frames, config.fvd_size_px],
        "device": str(device),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        },
        "median": {k: statistics.median(v) for k, v in figures.items()},
        "runs": figures,
    }
    print(f"{'figure':<22}{'median s':>10}")
    for k, v in result["median"].items():
        print(f"{k:<22}{v:>10.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
