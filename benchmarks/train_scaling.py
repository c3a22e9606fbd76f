"""4DM training on 1 vs N GPUs (`torchrun`), side by side in one run: loss curves and clips per second.

    python benchmarks/train_scaling.py --data /tmp/demo-renders --gpus 1 2 --json out/train_scaling.json

Each case trains with `python -m stages.mvgen.training` (N GPUs: under `torch.distributed.run --standalone`) at the
same global batch on 1 and on N GPUs (N GPUs: no gradient accumulation; 1 GPU: N-fold accumulation). The trainer draws
micro-batch k of a global batch identically whichever rank runs it, so the loss curves should agree up to float
non-determinism; the clips per second give the scaling efficiency.

Cases (`--cases`):
- `demo`: the shipped small 4DM (weights/demo/fourdm, 2.6 M UNet), every weight trained (scratch), fp32, 64²,
  many steps: the loss-curve comparison.
- `full`: the paper's model size with random weights (benchmarks/mvgen_sampling.py: 1.39 B UNet, SD VAE,
  OpenCLIP-size encoders), paper mode (only the motion modules train), bf16 autocast, 256² (the 64² renders are
  upsampled): the throughput that matters.
- `full-ckpt`: `full` with gradient checkpointing on 1 GPU: its time and memory cost.

Writes JSON (GPU name, torch/CUDA versions, per case and GPU count: steady clips/s, s/step, peak memory, loss
curve, wall time; per case the loss-curve agreement and the scaling efficiency) and prints a table. Data: render
artifacts with training rings (scripts/render_demo_training_data.py makes them from ../shared/assets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

CASES: dict[str, dict] = {
    "demo": {
        "weights": "demo",
        "steps": 150,
        "config": {
            "mode": "scratch",
            "batch_size": 8,
            "micro_batch_size": 1,
            "learning_rate": 1.0e-4,
            "num_frames": 8,
            "frame_stride": 2,
            "size_px": 64,
            "mixed_precision": "no",
        },
    },
    "full": {
        "weights": "full",
        "steps": 24,
        "config": {
            "mode": "paper",
            "batch_size": 4,
            "micro_batch_size": 1,
            "learning_rate": 1.0e-4,
            "num_frames": 8,
            "frame_stride": 2,
            "size_px": 256,
            "mixed_precision": "bf16",
        },
    },
}
CASES["full-ckpt"] = {
    "weights": "full",
    "steps": 12,
    "one_gpu_only": True,
    "config": {**CASES["full"]["config"], "gradient_checkpointing": True},
}


SECTIONS = {
    "mode": "optim",
    "learning_rate": "optim",
    "weight_decay": "optim",
    "ema_decay": "optim",
    "mixed_precision": "optim",
    "gradient_checkpointing": "optim",
    "num_frames": "data",
    "frame_stride": "data",
    "size_px": "data",
    "condition_dropout": "conditioning",
    "steps": "schedule",
    "batch_size": "schedule",
    "micro_batch_size": "schedule",
    "checkpoint_every": "schedule",
    "log_every": "schedule",
    "sample_every": "schedule",
}
"""The TrainConfig section of each key a case or `--set` names (keys not listed are top-level)."""


def nested(flat: dict) -> dict:
    """A flat case config as TrainConfig's sections."""
    out: dict = {}
    for key, value in flat.items():
        if key in SECTIONS:
            out.setdefault(SECTIONS[key], {})[key] = value
        else:
            out[key] = value
    return out


def full_size_weights(folder: Path) -> Path:
    """Save the full-size random FourDM (benchmarks/mvgen_sampling.py) once; later calls reuse the folder."""
    if (folder / "model_index.json").is_file():
        return folder
    sys.path.insert(0, str(REPO / "benchmarks"))
    from mvgen_sampling import build_full_size_pipeline

    tmp = folder.with_name(folder.name + ".tmp")
    build_full_size_pipeline(torch.float32).save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def train(
    case: str, gpus: int, data: Path, weights: Path, work: Path, steps: int, overrides: dict | None = None
) -> dict:
    """One torchrun training run; returns its log, summary and wall time."""
    spec = CASES[case]
    config = {
        **spec["config"],
        **(overrides or {}),
        "steps": steps,
        "weight_decay": 0.0,
        "condition_dropout": 0.1,
        "ema_decay": 0.0,
        "checkpoint_every": 10 * steps,  # only the final checkpoint: I/O is not what is measured
        "log_every": 1,
        "sample_every": 0,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "seed": 0,
    }
    run_dir = work / f"{case}-{gpus}gpu"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(nested(config)))
    # One process needs no launcher: with WORLD_SIZE unset the trainer takes the same single-process path.
    cmd = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [] if gpus == 1 else ["--nproc_per_node", str(gpus)]
    cmd += ["-m", "stages.mvgen.training", "--config", str(run_dir / "config.yaml"), "--data", str(data)]
    cmd += ["--weights", str(weights), "--output", str(run_dir / "out")]
    env = {**os.environ, "FOURD_TRACKING": "off", "OMP_NUM_THREADS": "4"}
    start = time.perf_counter()
    with open(run_dir / "console.log", "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (run_dir / "console.log").read_text()[-4000:]
        raise RuntimeError(f"{case} on {gpus} GPU(s) failed (exit {proc.returncode}):\n{tail}")
    records = [json.loads(line) for line in (run_dir / "out" / "train_log.jsonl").read_text().splitlines()]
    records = [r for r in records if r["phase"] == "unet"]
    summary = json.loads((run_dir / "out" / "summary.json").read_text())
    warm = max(2, len(records) // 10)  # the first steps include cuDNN autotuning and allocator growth
    steady = [r["clips_per_s"] for r in records[warm:]] or [r["clips_per_s"] for r in records]
    clips_per_s = statistics.median(steady)
    return {
        "gpus": gpus,
        "steps": steps,
        "batch_size": config["batch_size"],
        "accumulation": summary["accumulation"],
        "clips_per_s": clips_per_s,
        "s_per_step": config["batch_size"] / clips_per_s,
        "wall_s_incl_startup": wall,
        "train_wall_s": summary["wall_s"],
        "peak_memory_allocated_gb": summary["peak_memory_allocated_gb"],
        "peak_memory_reserved_gb": summary["peak_memory_reserved_gb"],
        "losses": [r["loss"] for r in records],
    }


def quarter_means(losses: list[float]) -> tuple[float, float]:
    """Mean loss over the first and over the last quarter of a curve."""
    n = max(1, len(losses) // 4)
    return statistics.fmean(losses[:n]), statistics.fmean(losses[-n:])


def compare_losses(a: list[float], b: list[float]) -> dict:
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    (a_first, a_last), (b_first, b_last) = quarter_means(a), quarter_means(b)
    return {
        "max_abs_diff": max(diffs),
        "mean_abs_diff": statistics.fmean(diffs),
        "first_step_diff": diffs[0],
        "mean_loss_first_quarter": [a_first, b_first],
        "mean_loss_last_quarter": [a_last, b_last],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="render artifacts with train/ rings")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts to compare (first = baseline)")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["demo", "full", "full-ckpt"])
    p.add_argument("--steps", type=int, default=None, help="override every case's step count")
    p.add_argument("--work", type=Path, default=Path("/tmp/train-scaling"), help="run folders and full weights")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--demo-weights", type=Path, default=REPO / "weights/demo/fourdm", help="weights of case demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--cpu", action="store_true", help="smoke test on CPU processes (gloo); timings meaningless")
    a = p.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in a.set)}
    if a.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif not torch.cuda.is_available():
        raise SystemExit("train_scaling.py needs CUDA GPUs (--cpu: a smoke test)")
    elif max(a.gpus) > torch.cuda.device_count():
        raise SystemExit(f"asked for {max(a.gpus)} GPUs, {torch.cuda.device_count()} visible")
    a.work.mkdir(parents=True, exist_ok=True)

    result: dict = {
        "benchmark": "train_scaling",
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if not a.cpu else ["cpu"],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cases": {},
    }
    for case in a.cases:
        spec = CASES[case]
        weights = a.demo_weights if spec["weights"] == "demo" else full_size_weights(a.work / "full")
        steps = a.steps or spec["steps"]
        counts = a.gpus[:1] if spec.get("one_gpu_only") else a.gpus
        runs = [train(case, n, a.data, weights, a.work, steps, overrides) for n in counts]
        entry: dict = {"config": {**spec["config"], **overrides}, "overrides": overrides, "runs": runs}
        base = runs[0]
        for r in runs[1:]:
            key = f"{base['gpus']}_vs_{r['gpus']}"
            entry.setdefault("scaling_efficiency", {})[key] = r["clips_per_s"] / (
                base["clips_per_s"] * r["gpus"] / base["gpus"]
            )
            entry.setdefault("speedup", {})[key] = r["clips_per_s"] / base["clips_per_s"]
            entry.setdefault("loss_curve", {})[key] = compare_losses(base["losses"], r["losses"])
        result["cases"][case] = entry
        if a.json:  # after every case: a later failure keeps what was measured
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(result, indent=2) + "\n")

    print(f"GPU: {result['gpu'][0]} ×{len(result['gpu'])}, torch {result['torch']}, CUDA {result['cuda']}")
    print(f"{'case':10} {'GPUs':>4} {'clips/s':>9} {'s/step':>8} {'peak GB':>8} {'loss first→last quarter':>26}")
    for case, entry in result["cases"].items():
        for r in entry["runs"]:
            first, last = quarter_means(r["losses"])
            mem = r["peak_memory_reserved_gb"] or 0.0
            print(
                f"{case:10} {r['gpus']:>4} {r['clips_per_s']:>9.2f} {r['s_per_step']:>8.3f} {mem:>8.1f} "
                f"{first:>12.4f} → {last:<11.4f}"
            )
        for key, eff in entry.get("scaling_efficiency", {}).items():
            lc = entry["loss_curve"][key]
            print(
                f"  {case} {key}: speed-up {entry['speedup'][key]:.2f}×, efficiency {eff:.1%}; loss curves: max |Δ| "
                f"{lc['max_abs_diff']:.2e}, mean |Δ| {lc['mean_abs_diff']:.2e}, step 1 |Δ| {lc['first_step_diff']:.1e}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
