"""Benchmark the preprocess stage on a video: wall time per run and per phase, frames per second.

    python benchmarks/bench_preprocess.py --input examples/fox/video.mp4 --repeats 3 --json out/bench_preprocess.json

Prints a table and writes JSON (machine, versions, each figure). CPU-only stage: no GPU figures.
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

import av
import cv2
import numpy as np

from stages.common.config import load_config
from stages.preprocess import PreprocessConfig, run
from stages.preprocess.matting import matte_frames
from stages.preprocess.video_io import probe_source, read_frames, select_indices


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("examples/fox/video.mp4"))
    parser.add_argument("--config", type=Path, default=Path("configs/preprocess.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("out/bench_preprocess.json"))
    args = parser.parse_args()
    os.environ["FOURD_TRACKING"] = "off"
    config = load_config(PreprocessConfig, args.config)

    info = probe_source(args.input)
    indices = select_indices(
        info.num_frames, config.num_frames, config.frame_selection, stride=config.stride, start=config.start_frame
    )
    frames = read_frames(info, indices)
    rgbs = [np.ascontiguousarray(f[..., :3]) for f in frames]
    with tempfile.TemporaryDirectory() as tmp:
        figures = {
            "probe_s": timed(lambda: probe_source(args.input), args.repeats),
            "decode_selected_s": timed(lambda: read_frames(info, indices), args.repeats),
            "matting_s": timed(lambda: matte_frames(rgbs, config.matting, seed=0, weights_dir=None), args.repeats),
            "stage_total_s": timed(
                lambda: run(config, input_path=args.input, output_dir=Path(tmp) / "o"), args.repeats
            ),
        }
    result = {
        "input": str(args.input),
        "source_frames": info.num_frames,
        "source_size": [info.width, info.height],
        "kept_frames": len(indices),
        "size_px": config.size_px,
        "matting_backend": config.matting.backend,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "pyav": av.__version__,
            "gpu": None,
        },
        "median": {k: statistics.median(v) for k, v in figures.items()},
        "runs": figures,
    }
    result["median"]["kept_frames_per_s"] = len(indices) / result["median"]["stage_total_s"]
    print(f"{'figure':<22}{'median':>10}")
    for k, v in result["median"].items():
        print(f"{k:<22}{v:>10.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
