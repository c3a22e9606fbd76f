"""Benchmark the render stage: seconds per rendered image at a few sizes and sample counts, and a whole stage run.

    .venv-render/bin/python benchmarks/bench_render.py --input examples/fox/Fox.glb --clip Survey \
        --json out/bench_render.json

Needs the render venv (stages/render/requirements.txt). Prints a table and writes JSON (machine, versions, each
figure). Cycles on CPU: no GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import bpy

from stages.common.cameras import orbit_c2w
from stages.common.config import load_config
from stages.render import RenderConfig, run
from stages.render.framing import FORWARD_YAW_DEG, framing_radius, normalisation_matrix
from stages.render.scene import BlenderScene


def seconds_per_image(asset: Path, clip: str, size_px: int, samples: int, repeats: int) -> list[float]:
    scene = BlenderScene(asset)
    try:
        played = scene.use_clip(clip)
        scene.set_time(played, 0.0)
        config = RenderConfig()
        radius = framing_radius(config.camera.radius, config.camera.fov_y_deg, config.fill_frac)
        matrix, _ = normalisation_matrix(scene.world_points(), FORWARD_YAW_DEG[config.forward_axis], radius)
        scene.set_world_transform(matrix)  # framed at time 0 only: the cost is what is measured here
        scene.setup_render(
            engine="cycles", samples=samples, size_px=size_px, fov_y_deg=45.0, lighting=config.lighting, seed=0
        )
        scene.render(orbit_c2w(0.0, 0.0, 1.1))  # warm-up: BVH build, kernel load
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            scene.render(orbit_c2w(90.0 * i, 0.0, 1.1))
            times.append(time.perf_counter() - t0)
        return times
    finally:
        scene.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("examples/fox/Fox.glb"))
    parser.add_argument("--clip", default="Survey")
    parser.add_argument("--config", type=Path, default=Path("configs/render.yaml"))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", type=Path, default=Path("out/bench_render.json"))
    args = parser.parse_args()
    os.environ["FOURD_TRACKING"] = "off"
    figures: dict[str, list[float]] = {}
    for size, samples in ((64, 4), (256, 16), (256, 64)):
        figures[f"image_{size}px_{samples}spp_s"] = seconds_per_image(
            args.input, args.clip, size, samples, args.repeats
        )
    config = load_config(RenderConfig, args.config).model_copy(update={"clip": args.clip})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = run(config, input_path=args.input, output_dir=Path(tmp) / "out", subject="bench")
        figures["stage_total_s"] = [time.perf_counter() - t0]
    images = manifest.gt.num_frames * (1 + manifest.gt.num_views)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"bpy": bpy.app.version_string},
        "stage": {"images": images, "size_px": config.size_px, "samples": config.samples},
        "figures": {k: {"median": statistics.median(v), "all": v} for k, v in figures.items()},
    }
    for key, value in result["figures"].items():
        print(f"{key:28s} {value['median']:8.3f}")
    print(f"stage: {images} images → {figures['stage_total_s'][0] / images:.3f} s per image")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
