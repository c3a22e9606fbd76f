"""Benchmark one distill iteration at the paper's configuration on a GPU: seconds per step and peak memory.

    python benchmarks/distill_step.py --steps 3 --json out/distill_step.json

Full-size architectures with random weights (timing and memory do not depend on the values): the dynamic NeRF of
configs/distill.yaml (3D + 4D hash grids, 16 levels, 2^19), full-size 4DM for the SDS (guidance.dtype of the
config), full-width LPIPS-VGG; 4 views × 8 frames; measured at the 64² start and at 256² (after the resolution
milestones). Each phase catches CUDA out-of-memory and reports it instead of a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from stages.common.cameras import OrbitCamera
from stages.common.config import load_config
from stages.common.lpips import LPIPSVGG
from stages.distill.config import DistillConfig
from stages.distill.guidance import FourDMGuidance
from stages.distill.trainer import AnchorTarget, Trainer, build_field

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def full_size_pipeline(dtype: torch.dtype):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mvgen_sampling import build_full_size_pipeline  # noqa: E402  (a sibling script, not a package)

    return build_full_size_pipeline(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/distill.yaml"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("out/distill_step.json"))
    args = parser.parse_args()
    device = torch.device("cuda")
    config = load_config(DistillConfig, args.config)
    torch.manual_seed(0)
    field = build_field(config).to(device)
    pipe = full_size_pipeline(DTYPES[config.guidance.dtype]).to(device)
    guidance = FourDMGuidance(
        pipe, guidance_scale=config.guidance.guidance_scale, std_rescale=config.guidance.std_rescale
    )
    frames = (np.random.default_rng(0).random((8, 256, 256, 3)) * 255).astype(np.uint8)
    conditioning = guidance.prepare(frames, "a fox", config.guidance.negative_prompt, torch.Generator(device))
    anchor = AnchorTarget(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255,
        OrbitCamera.from_angles(0, 0.0, 0.0, config.cameras.radius, config.cameras.fov_y_deg),
    )
    trainer = Trainer(
        config,
        field,
        anchor,
        guidance=guidance,
        conditioning=conditioning,
        lpips=LPIPSVGG(input_range="zero_to_one_unscaled", channel_norm="lpips").to(device),
        device=device,
    )
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "guidance_dtype": config.guidance.dtype,
        "hash_backend": config.field.backend,
        "field_parameters": sum(p.numel() for p in field.parameters()),
    }
    for label, step in (("start_64px", 0), ("late_256px", max(config.sds_resolution.milestones) + 1)):
        trainer.step = step
        size = config.sds_resolution(step)
        try:
            trainer.train_step()  # warm-up (and occupancy update)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                metrics = trainer.train_step()
            torch.cuda.synchronize()
            result[label] = {
                "sds_px": size,
                "s_per_step": (time.perf_counter() - t0) / args.steps,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                "samples_per_ray": metrics.get("samples_per_ray"),
            }
        except torch.OutOfMemoryError as err:
            result[label] = {
                "sds_px": size,
                "out_of_memory": str(err).splitlines()[0],
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            }
            torch.cuda.empty_cache()
        print(label, json.dumps(result[label]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
