"""What a run writes for people and tools: train_log.jsonl (and MLflow) along the way, summary.json and report.md
at the end."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["LOG_FILE", "SUMMARY", "TrainLog", "write_report"]

LOG_FILE, SUMMARY = "train_log.jsonl", "summary.json"

log = logging.getLogger(__name__)


class TrainLog:
    """Averages a phase's losses over `every` steps, then appends a JSON line to train_log.jsonl (phase, step, loss,
    lr, the loss parts, windows per second since the last line, seconds since `start`, a `time.monotonic()`) and
    logs to MLflow. With several processes every rank calls `add` (the mean is all-reduced by `reduce`) and only
    the one with `write` writes."""

    def __init__(
        self,
        path: Path,
        every: int,
        tracker,  # noqa: ANN001
        start: float,
        *,
        write: bool = True,
        reduce: Callable[[float], float] = lambda x: x,
        device: torch.device | None = None,
    ) -> None:
        self.path, self.every, self.tracker, self.start = path, every, tracker, start
        self.write, self.reduce, self.device = write, reduce, device
        self.losses: list[Tensor | float] = []
        self.parts: dict[str, list[Tensor | float]] = {}
        self.last: dict[str, float] = {}
        self.windows, self.since = 0, time.perf_counter()

    def add(self, phase: str, step: int, loss: Tensor | float, parts: dict, lr: float, windows: int = 0) -> None:
        self.losses.append(loss.detach() if isinstance(loss, Tensor) else loss)
        for k, v in parts.items():
            self.parts.setdefault(k, []).append(v.detach() if isinstance(v, Tensor) else v)
        self.windows += windows
        if step % self.every:
            return
        mean = lambda xs: float(torch.stack([torch.as_tensor(x).float().cpu() for x in xs]).mean())  # noqa: E731
        row = {"phase": phase, "step": step, "loss": self.reduce(mean(self.losses)), "lr": lr}
        row.update({k: mean(v) for k, v in self.parts.items()})
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.windows:
            row["clips_per_s"] = self.windows / (now - self.since)
        row["elapsed_s"] = round(time.monotonic() - self.start, 2)
        self.losses, self.parts, self.windows, self.since = [], {}, 0, now
        self.last[phase] = row["loss"]
        if not self.write:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.tracker.log_metrics({f"{phase}/{k}": v for k, v in row.items() if k not in ("phase", "step")}, step=step)
        log.info("%s step %d: loss %.4f (lr %.2e, %.0f s)", phase, step, row["loss"], lr, row["elapsed_s"])


def _vae_line(vae: dict) -> str:
    """The report's VAE sentence: trained in the run, or the starting weights' (`--weights`)."""
    if "from" in vae:
        return f"VAE: the starting weights' (`{vae['from']}`), frozen; scaling factor {vae['scaling_factor']:.5f}."
    return (
        f"VAE: {vae['steps']} steps, reconstruction PSNR {vae['recon_psnr_db']:.2f} dB "
        f"(16 images, `samples/vae_reconstructions.png`), scaling factor {vae['scaling_factor']:.5f}."
    )


def write_report(output_dir: Path, summary: dict) -> None:
    """`report.md`: the numbers of the model card (data, sizes, steps, loss curve, sample PSNRs) from the run."""
    rows = (
        [json.loads(line) for line in (output_dir / LOG_FILE).read_text().splitlines()]
        if (output_dir / LOG_FILE).is_file()
        else []
    )
    lines = [
        "# Demo 4DM training run",
        "",
        f"Device {summary['device']}, torch {summary['torch']}; this run {summary['run_wall_s']} s wall.",
        f"Data: {len(summary['data']['clips'])} clips of {len(summary['data']['subjects'])} subjects "
        f"({', '.join(summary['data']['subjects'])}), {summary['data']['images']} images at "
        f"{summary['data']['size_px']}².",
        "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in summary["parameters"].items()) + ".",
        _vae_line(summary["vae"]),
        f"UNet: {summary['unet']['steps']} steps in all ({summary['unet']['steps_this_run']} in this run at "
        f"{summary['unet']['steps_per_s_this_run']} steps/s), {summary['unet']['windows_seen']:,} windows of "
        f"{summary['data']['num_frames']} frames × 5 slots.",
        f"Seconds: {summary['seconds']}.",
        f"Recipe of this run: {summary.get('recipe', 'not recorded')}.",
        "",
        "## Loss (mean over each logging interval)",
        "",
        "| phase | step | loss |",
        "|---|---|---|",
    ]
    for phase in ("vae", "unet"):
        sel = [r for r in rows if r["phase"] == phase]
        picks = (
            sorted({0, len(sel) // 10, len(sel) // 4, len(sel) // 2, 3 * len(sel) // 4, len(sel) - 1}) if sel else []
        )
        lines += [f"| {phase} | {sel[i]['step']} | {sel[i]['loss']:.4f} |" for i in picks if 0 <= i < len(sel)]
    lines += ["", "## Samples (PSNR in dB against the ground-truth views; grids in samples/)", ""]
    scales = sorted({k for m in summary["samples"].values() for k in m})
    lines += ["| clip | " + " | ".join(scales) + " |", "|---" * (len(scales) + 1) + "|"]
    for clip, m in summary["samples"].items():
        lines.append(f"| {clip} | " + " | ".join(f"{m[k]:.2f}" for k in scales) + " |")
    if summary.get("camera_check"):
        recipe = summary.get("recipe", {})
        front = recipe.get("data.front_view_only", False)
        any_base = front and recipe.get("data.front_view_any_base", False)
        flags = (" --front-view" if front else "") + (" --any-base" if any_base else "")
        kind = "v" if recipe.get("model.prediction_type") == "v_prediction" else "ε"
        lines += [
            "",
            f"## Camera check (`python -m stages.mvgen.training.camera_check{flags}`: "
            f"{kind}-MSE of 8 training windows{' conditioned on the front view' if front else ''} with",
            "the true cameras vs each view given the next view's camera; ~0 % means the camera input is unused)",
            "",
            "| t | true | rotated | relative gap | x̂0 error, own view | x̂0 error, next view |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['t']} | {r['mse_true']:.5f} | {r['mse_rotated']:.5f} | {r['relative_gap']:+.2%} | "
            f"{r['x0_own']:.4f} | {r['x0_other']:.4f} |"
            for r in summary["camera_check"]
        ]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
