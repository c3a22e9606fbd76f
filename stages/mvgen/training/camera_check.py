"""Does a 4DM use its camera input? ε-MSE of training windows with the true cameras vs rotated ones, per timestep.

    python -m stages.mvgen.training.camera_check --weights weights/demo/fourdm --data <render artifacts> \
        [--clip fox-survey] [--windows 6] [--timesteps 50 200 400 600 800 950] [--front-view] \
        [--json out/camera_check.json]

Windows are drawn as the demo model trains on them (`windows.draw_window`: subject-balanced, the largest stride
that fits, a random conditioning view, 4 orthogonal views of a random base, cameras relative to the conditioning
view; with `--front-view`, as a `front_view_only` model trains: conditioned on the ring's front view,
0/90/180/270° out) from the training rings under `--data` (one clip with `--clip`). Each timestep's noise is shared
by the two evaluations (`objective.camera_gap`), so the difference is the camera input's effect alone. A trained
model should do clearly worse with the rotated cameras at high t; equal columns mean the camera pathway is unused
and the views' layout is left to chance. The x0 columns: the error of the predicted clean views against their own
truth and against the next view's; own far below other at the highest t means the views are readable from their
noisy latents, so training never needs the camera.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.mvgen.pipeline_fourdm import FourDMPipeline, load_fourdm
from stages.mvgen.training.bank import ClipBank, load_clip_bank, sample_windows
from stages.mvgen.training.batches import build_caches
from stages.mvgen.training.objective import camera_gap
from stages.mvgen.training.windows import WindowSpec

__all__ = ["check_cameras", "main"]


def check_cameras(
    pipe: FourDMPipeline,
    bank: ClipBank,
    *,
    windows: int = 6,
    num_frames: int = 8,
    max_stride: int = 3,
    timesteps: list[int] | tuple[int, ...] = (50, 200, 400, 600, 800, 950),
    seed: int = 0,
    front_view_only: bool = False,
    any_base: bool = False,
) -> list[dict]:
    """Rows {t, mse_true, mse_rotated, gap, relative_gap, x0_own, x0_other} (`objective.camera_gap`) over `windows`
    windows of `bank` (posterior means; only the images the windows use are encoded). `front_view_only`: windows as
    the demo uses the model, `any_base` with any quadruple of the ring (`windows.draw_window`)."""
    device = pipe.device
    gen = torch.Generator().manual_seed(seed)
    spec = WindowSpec(
        num_frames, max_stride, "largest_fitting", "subject", front_view_only=front_view_only, any_base=any_base
    )
    w = sample_windows(bank, windows, spec, gen)
    used, slot = torch.unique(torch.cat([w.views.reshape(-1), w.condition.reshape(-1)]), return_inverse=True)
    caches = build_caches(pipe, bank, torch.from_numpy(bank.rgb), index=used)
    slot = slot.to(device)
    x0 = caches.mean[slot[: w.views.numel()]].reshape(*w.views.shape, *caches.mean.shape[1:])  # (B, F, 4, C, h, w)
    cond = slot[w.views.numel() :].reshape(w.condition.shape)
    ref = caches.mean[cond]  # (B, F, C, h, w)
    tokens = caches.tokens[cond]  # (B, F, T, E)
    text = caches.text[w.captions.to(device)]  # (B, 77, D)
    result = camera_gap(pipe.unet, pipe.scheduler, x0, ref, tokens, text, w.cameras.to(device), list(timesteps), gen)
    rows = []
    for t, r in result.items():
        gap = r["mse_rotated"] - r["mse_true"]
        rows.append({"t": t, **r, "gap": gap, "relative_gap": gap / r["mse_true"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="a 4DM folder (model_index.json)")
    p.add_argument("--data", type=Path, required=True, help="render artifacts with train/ rings, or one of them")
    p.add_argument("--clip", default="", help="only this clip (a render artifact's folder name under --data)")
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--frames", type=int, default=8, help="frames per window (4DM: 8)")
    p.add_argument("--max-stride", type=int, default=3)
    p.add_argument("--timesteps", type=int, nargs="+", default=[50, 200, 400, 600, 800, 950])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--front-view", action="store_true", help="windows conditioned on the front view (a front_view_only model)"
    )
    p.add_argument("--any-base", action="store_true", help="with --front-view: any quadruple, not the front one")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    try:
        data = a.data / a.clip if a.clip else a.data
        if not data.is_dir():
            raise StageError(f"{data} is not a folder of render artifacts")
        pipe = load_fourdm(a.weights, torch_dtype=torch.float32).to(resolve_device(a.device))
        size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        bank = load_clip_bank(data, size, a.frames)
        rows = check_cameras(
            pipe,
            bank,
            windows=a.windows,
            num_frames=a.frames,
            max_stride=a.max_stride,
            timesteps=a.timesteps,
            seed=a.seed,
            front_view_only=a.front_view,
            any_base=a.any_base,
        )
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = "ε" if pipe.scheduler.config.prediction_type == "epsilon" else "v"
    print(f"{a.weights} on {', '.join(bank.names)}: {kind}-MSE of {a.windows} windows, true vs rotated cameras")
    print(f"{'t':>5} {'true':>9} {'rotated':>9} {'gap':>10} {'relative':>9} {'x0 own':>8} {'x0 other':>8}")
    for r in rows:
        losses = f"{r['mse_true']:>9.5f} {r['mse_rotated']:>9.5f} {r['gap']:>10.2e} {r['relative_gap']:>8.2%}"
        print(f"{r['t']:>5} {losses} {r['x0_own']:>8.4f} {r['x0_other']:>8.4f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"weights": str(a.weights), "clips": bank.names, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
