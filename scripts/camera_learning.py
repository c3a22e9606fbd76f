"""CPU experiment: does a tiny demo-style 4DM learn to use its camera input? (issue #9, weights/demo/README.md)

    python scripts/camera_learning.py --prediction v_prediction --zero-terminal-snr --front-view --steps 600

Synthetic training data: one 8-view ring whose square moves right and turns from blue to red with the view (and
brightens in green with the frame), so the views differ a lot and a model that ignores its cameras pays at high noise.
The demo model's trainer (`stages.mvgen.training.demo_model.run`, configs/tiny/demo_model.yaml sizes, 300 VAE steps,
batch 8, lr 1e-3) trains on it, then `camera_check.check_cameras` evaluates windows drawn as in training: loss with the
true cameras vs the views' cameras rotated by one slot, and the x̂0 error against each view's own latent vs the
next view's. `--front-view` trains (and evaluates) as the demo uses the model: the conditioning view is always the
ring's front view and the 4 views sit at 0/90/180/270° from it (`front_view_only`); without it, conditioning and
view quadruple are drawn at random, so a camera (relative to the conditioning view) tells a view only together with
what the reference shows. About 4 minutes per 600 steps on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.common.config import load_config  # noqa: E402
from stages.mvgen.pipeline_fourdm import load_fourdm  # noqa: E402
from stages.mvgen.training.camera_check import check_cameras  # noqa: E402
from stages.mvgen.training.demo_config import DemoModelConfig  # noqa: E402
from stages.mvgen.training.demo_data import load_clip_bank  # noqa: E402
from stages.mvgen.training.demo_model import EXPORT, run  # noqa: E402
from stages.mvgen.training.synthetic_ring import write_ring_artifact  # noqa: E402

PX, VIEWS, FRAMES = 16, 8, 16


def write_sliding_ring(root: Path, name: str = "slide") -> Path:
    """A render artifact whose view v shows an 8×8 square at x = v px, colour (30v, 10f, 240 − 30v)."""

    def image(v: int, f: int) -> np.ndarray:
        rgba = np.zeros((PX, PX, 4), np.uint8)
        rgba[4:12, v : v + 8] = (30 * v, 10 * f, 240 - 30 * v, 255)
        return rgba

    return write_ring_artifact(
        root / name, image, views=VIEWS, frames=FRAMES, size_px=PX, caption="a block", code_version="experiment"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"], default="epsilon")
    p.add_argument("--zero-terminal-snr", action="store_true")
    p.add_argument("--front-view", action="store_true", help="condition on the front view, as the demo does")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--work", type=Path, default=None, help="run folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        art = write_sliding_ring(work / "data")
        cfg = load_config(DemoModelConfig, REPO / "configs/tiny/demo_model.yaml").model_copy(
            update={
                "vae_steps": 300,
                "unet_steps": a.steps,
                "batch_size": 8,
                "learning_rate": 1e-3,
                "warmup_steps": 50,
                "ema_decay": 0.99,
                "checkpoint_every": 10 * a.steps,
                "log_every": 100,
                "sample_guidance_scales": (1.0,),
                "prediction_type": a.prediction,
                "zero_terminal_snr": a.zero_terminal_snr,
                "front_view_only": a.front_view,
            }
        )
        run(cfg, data_dir=work / "data", output_dir=work / "run")
        pipe = load_fourdm(work / "run" / EXPORT)
        bank = load_clip_bank(art, PX, cfg.num_frames)
        rows = check_cameras(
            pipe,
            bank,
            windows=a.windows,
            num_frames=cfg.num_frames,
            max_stride=cfg.max_frame_stride,
            timesteps=(200, 500, 800, 950, 999),
            seed=1,
            front_view_only=a.front_view,
        )
    setup = f"{a.prediction}, zero terminal SNR {a.zero_terminal_snr}, front view {a.front_view}, {a.steps} steps"
    print(setup)
    print(f"{'t':>5} {'true':>9} {'rotated':>9} {'x0 own':>8} {'x0 other':>8}")
    for r in rows:
        print(f"{r['t']:>5} {r['mse_true']:>9.4f} {r['mse_rotated']:>9.4f} {r['x0_own']:>8.4f} {r['x0_other']:>8.4f}")
    if a.json:
        a.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
