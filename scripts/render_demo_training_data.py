"""Render the demo model's training set: every clip of every animated asset in a folder, as render-stage artifacts.

    .venv-render/bin/python scripts/render_demo_training_data.py --assets ../shared/assets \
        --output out/demo-renders [--config configs/demo/render.yaml] [--only Fox.glb ...]

One artifact per (asset, clip), named `<asset>-<clip>` in lower case, each with its 16-view training ring
(`train/`) at 64² (configs/demo/render.yaml). Timing per clip: clips of at least 23/8 s get the example subject's
24 frames at 8 fps (so the fox's Survey ring holds exactly the instants of examples/fox/render); shorter clips get
16 frames spread over the whole clip (fps = 15 / duration), so every clip yields 8-frame training windows.
Artifacts already rendered with the same config are kept (an interrupted run resumes). `index.json` records every
clip's timing and the seconds it took to render. Static assets (no animation) are skipped.

Runs in the render venv (`make render-env`: bpy needs numpy<2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("FOURD_TRACKING", "off")  # a data-set build, not a pipeline run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.common.artifacts import RenderManifest  # noqa: E402
from stages.common.config import config_sha256, load_config  # noqa: E402
from stages.common.errors import StageError  # noqa: E402
from stages.common.logs import setup_logging  # noqa: E402
from stages.render.config import RenderConfig  # noqa: E402

log = logging.getLogger("render_demo_training_data")

CAPTIONS = {
    "Fox": "a low-poly red fox",  # = examples/fox/Fox.txt, the demo input's prompt
    "Flamingo": "a low-poly pink flamingo",
    "Parrot": "a low-poly parrot",
    "RobotExpressive": "a cartoon robot",
    "Alpaca_animated": "a low-poly alpaca",
}
"""One caption per asset (a subject label for the text branch); other assets fall back to the render stage's rule."""

LONG_FRAMES, LONG_FPS, SHORT_FRAMES = 24, 8.0, 16


def clip_timing(duration_s: float) -> tuple[float, int]:
    """(fps, num_frames) of a clip: 24 frames at 8 fps when they fit, else 16 frames spanning the whole clip.

    Args:
        duration_s: clip length in seconds (> 0).
    """
    if duration_s + 1e-6 >= (LONG_FRAMES - 1) / LONG_FPS:
        return LONG_FPS, LONG_FRAMES
    # 15 intervals over the clip; the tiny margin keeps the last frame inside the clip after rounding.
    return (SHORT_FRAMES - 1) / duration_s * (1.0 + 1e-6), SHORT_FRAMES


def subject_name(asset: Path, clip: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", f"{asset.stem}-{clip}".lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", type=Path, required=True, help="folder of animated assets (.glb)")
    p.add_argument("--output", type=Path, required=True, help="folder for the artifacts and index.json")
    p.add_argument("--config", type=Path, default=REPO / "configs/demo/render.yaml")
    p.add_argument("--only", nargs="*", default=None, help="asset file names to render (default: all)")
    a = p.parse_args(argv)
    setup_logging()
    from stages.render import render_asset  # bpy from here on
    from stages.render.scene import BlenderScene

    base = load_config(RenderConfig, a.config)
    assets = sorted(x for x in a.assets.glob("*.glb") if a.only is None or x.name in a.only)
    if not assets:
        raise SystemExit(f"error: no .glb assets in {a.assets}")
    a.output.mkdir(parents=True, exist_ok=True)
    index_path = a.output / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"clips": {}}
    started = time.perf_counter()
    for asset in assets:
        scene = BlenderScene(asset)
        clips = {name: scene.use_clip(name).duration_s for name in scene.clips}
        scene.close()
        if not clips:
            log.info("%s: no animation, skipped", asset.name)
            continue
        for clip, duration in clips.items():
            fps, frames = clip_timing(duration)
            prompt = CAPTIONS.get(asset.stem)
            config = base.model_copy(update={"clip": clip, "fps": fps, "num_frames": frames, "prompt": prompt})
            subject = subject_name(asset, clip)
            out = a.output / subject
            sha = config_sha256(config)
            if (out / "manifest.json").is_file():
                try:
                    if RenderManifest.load(out).config_sha256 == sha:
                        log.info("%s: already rendered", subject)
                        continue
                except StageError:
                    pass
            t0 = time.perf_counter()
            render_asset(config, asset=asset, output_dir=out, subject=subject)
            seconds = time.perf_counter() - t0
            index["clips"][subject] = {
                "asset": asset.name,
                "clip": clip,
                "duration_s": duration,
                "fps": fps,
                "num_frames": frames,
                "caption": prompt,
                "render_s": round(seconds, 1),
            }
            index_path.write_text(json.dumps(index, indent=2) + "\n")
            log.info("%s: %d frames at %.3g fps in %.1f s", subject, frames, fps, seconds)
    index["render_s_total"] = round(sum(c["render_s"] for c in index["clips"].values()), 1)
    index["config"] = str(a.config.relative_to(REPO) if a.config.is_relative_to(REPO) else a.config)
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    log.info(
        "%d clips in %s; this run %.1f s, all clips %.1f s of rendering",
        len(index["clips"]),
        a.output,
        time.perf_counter() - started,
        index["render_s_total"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
