"""A compressed production run: the paper's distill recipe with full-size 4DM, killed, resumed, exported, evaluated.

    python benchmarks/production_run.py --json out/production_run.json          # one CUDA GPU, ~6-8 min
    python benchmarks/production_run.py --smoke --json out/production_run.json  # tiny models on the CPU (tests)

What runs, in order, each stage through its own code path (`python -m stages.<stage>`; distill through
`stages.distill.run` in a child process, with a step callback that records time and memory):
1. Weights with random values in the layouts the stages read: the full-size 4DM in our converter's output format
   (`save_pretrained` folder, as `python -m stages.mvgen.conversion` writes it: UNet 1.39 B, SD VAE, SD-2.1 text and
   ViT-H/14 image encoders; benchmarks/mvgen_sampling.py builds them), LPIPS-VGG (`vgg16-397923af.pth` + `vgg.pth`)
   and the eval networks (CLIP ViT-B/32 image tower, I3D). Time and memory do not depend on the values.
2. preprocess of the bundled example (examples/fox/render/input, as params.yaml's `fox`), configs/preprocess.yaml.
3. mvgen, configs/mvgen.yaml with `--dtype bfloat16 --num-inference-steps 2` (with random weights the anchor videos
   are noise whatever the sampler does; 4DM sampling has its own benchmark, mvgen_sampling.py).
4. distill with `--config` (configs/distill.yaml) compressed (below) and configs/runtime.yaml, mesh export on; the
   child process is SIGKILLed from outside after a step of the last phase that follows a checkpoint (the child
   holds in its step callback at `--kill-after`, so the kill lands at a known step), then rerun with the same
   arguments: it resumes from the checkpoint, finishes, and exports renders, the orbit video and meshes.
5. eval of the distill renders against the example's ground truth (examples/fox/render), configs/eval.yaml.
Every artifact is loaded back with its manifest class (`load_any_manifest`: schema, file list, sizes, counts),
as the next stage would; the checkpoint's step and the resumed run's first step are checked.

**Compression.** The config's phases are its resolution segments `[0, m1), [m1, m2), [m2, num_steps)` (the paper:
5000, 10000 of 35000: 64², 192², 256² with the opacity loss on from step 10001). `--phase-steps` gives each segment
a length (default 32, 32, 48). Every step that is a *position* in the schedule is mapped piecewise-linearly from
the real segments onto the compressed ones, so it keeps its place relative to the milestones: the milestones, every
ramp's start/end step (orientation 0→5000, the SDS timestep anneals 0→5000, the opacity switch 10000→10001,
sparsity, reconstruction), `guidance.start_step` and the occupancy warm-up (256). A switch of one step keeps one
step. *Cadences* are set directly: `--occupancy-every` (paper 16; default 8: several updates per phase),
`--checkpoint-every` (paper 500; default 12: a checkpoint inside the last phase to resume from, most saves
between two occupancy updates so that each extra is measured alone). Logging (every 50)
and validation (off without tracking) stay as configured. Everything else is the config's.

**Per phase** (from the child's step records; the first two steps of a phase in each process are left out: they
compile Triton kernels for the phase's new shapes): median and mean s/step of the steps with no periodic extra,
the extra seconds of a step that updates the occupancy grid and of one that follows a checkpoint save (medians of
their excess over the phase median), peak GPU memory allocated/reserved of the phase's steps (a process's first
step, which includes loading and conditioning, is reported apart as `setup`).

**35 000-step extrapolation** (`extrapolated_35k`): Σ_phase L_p · median_p + Σ_phase U_p · occupancy_extra_p
+ K · checkpoint_extra + startup + export, with L_p the phase's real length (5000, 5000, 25000), U_p the number of
occupancy updates the real cadence makes in it (every 16th step), K the checkpoints of the real cadence (every 500th
step and the last), startup the child's time from its start to the end of its first step less one median step of
the first phase (imports, loading 4DM and LPIPS, hashing the inputs, conditioning), export the time from the last
step to the manifest (renders, preview, meshes). Triton compile steps are one-off costs a long run amortises and
are left out; a trained field's sample counts differ from this run's random-gradient field, so the late phases'
s/step stands for a field of this run's sample counts (reported per phase).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PAPER_CADENCE = {"occupancy_update_every_steps": 16, "checkpoint_every_steps": 500}
EXAMPLE_INPUT = REPO / "examples/fox/render/input"
EXAMPLE_GROUND_TRUTH = REPO / "examples/fox/render"
SKIP_PHASE_START = 2
"""Steps at the start of a phase and of a process left out of the per-step statistics: Triton compiles there."""


# ---------------------------------------------------------------------------------------------------------------
# The compressed config


def compress_config(data: dict, phase_steps: list[int], *, occupancy_every: int, checkpoint_every: int) -> dict:
    """The config (plain data, as `load_config_data` reads it) with its schedule compressed (module docstring)."""
    res = data["sds_resolution"]
    real = [0, *res["milestones"], data["num_steps"]]
    if len(phase_steps) != len(real) - 1:
        raise SystemExit(
            f"--phase-steps needs {len(real) - 1} lengths (one per resolution segment), got {phase_steps}"
        )
    new = [0]
    for length in phase_steps:
        new.append(new[-1] + length)

    def position(step: int) -> int:
        for (r0, r1), (n0, n1) in zip(itertools.pairwise(real), itertools.pairwise(new), strict=True):
            if step <= r1:
                return round(n0 + (step - r0) * (n1 - n0) / max(1, r1 - r0))
        return new[-1]

    def ramp(schedule: dict) -> dict:
        start = position(schedule["start_step"])
        end = max(position(schedule["end_step"]), start + (1 if schedule["end_step"] > schedule["start_step"] else 0))
        return {**schedule, "start_step": start, "end_step": end}

    def walk(node):
        if isinstance(node, dict):
            if {"start_step", "end_step", "start_value", "end_value"} <= node.keys():
                return ramp(node)
            return {k: walk(v) for k, v in node.items()}
        return node

    out = walk(data)
    out["num_steps"] = new[-1]
    out["sds_resolution"] = {**res, "milestones": new[1:-1]}
    out["guidance"] = {**out["guidance"], "start_step": position(data["guidance"]["start_step"])}
    out["renderer"] = {
        **out["renderer"],
        "occupancy_warmup_steps": position(data["renderer"]["occupancy_warmup_steps"]),
        "occupancy_update_every_steps": occupancy_every,
    }
    out["checkpoint_every_steps"] = checkpoint_every
    out["mesh"] = {**out["mesh"], "enabled": True}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Inputs: weights with random values, written where the stages read them


def write_full_size_weights(root: Path) -> dict[str, Path]:
    """4DM (converter layout), LPIPS-VGG and the eval networks at full size with random values."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    from stages.common.lpips import LPIPSVGG, save_lpips_vgg
    from stages.eval.metrics.inception_i3d import InceptionI3d

    sys.path.insert(0, str(REPO / "benchmarks"))
    from mvgen_sampling import build_full_size_pipeline  # noqa: PLC0415  (a sibling script, not a package)

    pipe = build_full_size_pipeline(torch.float32)
    pipe.feature_extractor = CLIPImageProcessorPil()  # the converter's processor (the PIL backend, open_clip's resize)
    pipe.save_pretrained(root / "fourdm")
    marker = {"converted_from": {"imagedream": "random weights (benchmarks/production_run.py)", "fourdm": None}}
    (root / "fourdm/manifest.json").write_text(json.dumps(marker, indent=2) + "\n")
    del pipe
    torch.manual_seed(1)
    lpips = LPIPSVGG(input_range="zero_to_one_unscaled", channel_norm="lpips")
    for head in lpips.heads:
        torch.nn.init.uniform_(head.model[1].weight, 0.0, 0.1)  # trained heads are non-negative
    save_lpips_vgg(lpips, root / "eval/lpips")
    torch.manual_seed(2)
    clip = CLIPVisionModelWithProjection(  # openai/clip-vit-base-patch32's image tower
        CLIPVisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
            projection_dim=512,
        )
    )
    clip.save_pretrained(root / "eval/clip")
    CLIPImageProcessorPil().save_pretrained(root / "eval/clip")
    torch.manual_seed(3)
    i3d = InceptionI3d(num_classes=400)
    for module in i3d.modules():
        if isinstance(module, torch.nn.Conv3d):  # He init keeps activations alive through 20+ layers
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    (root / "eval/i3d").mkdir(parents=True, exist_ok=True)
    torch.save(i3d.state_dict(), root / "eval/i3d/i3d_pretrained_400.pt")
    return {"fourdm": root / "fourdm", "lpips": root / "eval/lpips", "eval": root / "eval"}


def write_tiny_weights(root: Path) -> dict[str, Path]:
    """The test suite's tiny 4DM, LPIPS and eval networks (smoke run)."""
    from tests.distill.tiny import write_tiny_lpips
    from tests.eval.builders import write_tiny_weights as write_tiny_eval
    from tests.mvgen.tiny import tiny_pipeline

    tiny_pipeline(root / "_tmp").save_pretrained(root / "fourdm")
    write_tiny_eval(root / "eval")
    return {"fourdm": root / "fourdm", "lpips": write_tiny_lpips(root / "lpips"), "eval": root / "eval"}


# ---------------------------------------------------------------------------------------------------------------
# The distill child: the stage's run() with a step recorder


def distill_child(spec_file: Path) -> None:
    """Run `stages.distill.run` as the spec says, appending one JSON line per step to the spec's step log; hold
    (wait to be killed) after the step `hold_at_step` when it is set."""
    started, parent = time.time(), os.getppid()
    spec = json.loads(spec_file.read_text())
    import torch

    from stages.common.config import load_config, load_runtime
    from stages.common.logs import setup_logging
    from stages.distill import DistillConfig, run

    setup_logging()
    config = load_config(DistillConfig, Path(spec["config"]))
    config = config.model_copy(update={"runtime": load_runtime(DistillConfig, Path(spec["runtime"]), "distill")})
    cuda = torch.cuda.is_available() and config.device != "cpu"
    log = open(spec["step_log"], "a", buffering=1)  # noqa: SIM115 - open for the whole run

    def record(event: str, **values) -> None:
        log.write(json.dumps({"event": event, "pid": os.getpid(), "t": time.perf_counter(), **values}) + "\n")
        log.flush()

    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    record("start", wall=started, imported_s=time.time() - started, gpu=gpu)

    def on_step(trainer) -> None:
        if cuda:
            torch.cuda.synchronize()
        index = trainer.step - 1  # the step just taken, as the schedules count it
        w = config.loss_weights
        stats = trainer.render_stats.get("sds", {})
        peaks = {}
        if cuda:
            peaks = {
                "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            }
            torch.cuda.reset_peak_memory_stats()
        record(
            "step",
            step=trainer.step,
            sds_px=config.sds_resolution(index),
            sds_on=w.sds > 0 and index >= config.guidance.start_step,
            opaque_on=w.opaque(index) > 0,
            occupancy_update=index % config.renderer.occupancy_update_every_steps == 0,
            after_checkpoint=index > 0 and index % config.checkpoint_every_steps == 0,
            samples_per_ray=stats.get("samples", 0) / max(1, stats.get("rays", 0)),
            **peaks,
        )
        if trainer.step == spec.get("hold_at_step"):
            while os.getppid() == parent:  # the benchmark kills this process now (SIGKILL)
                time.sleep(0.5)
            os._exit(1)  # the benchmark itself ended (its own timeout): do not train on unobserved

    record("run")
    run(
        config,
        input_dir=Path(spec["input"]),
        preprocess_dir=Path(spec["preprocess"]),
        weights_dir=Path(spec["weights"]),
        lpips_dir=Path(spec["lpips"]),
        output_dir=Path(spec["output"]),
        checkpoint_dir=Path(spec["checkpoint"]),
        on_step=on_step,
    )
    record("done")


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


class Failed(Exception):
    """A stage or check failed; the JSON records it and the run stops there."""


def stage_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("FOURD_TRACKING", "off")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_stage(name: str, cmd: list[str], logs: Path, parts: dict) -> None:
    """Run a stage command to completion; its output goes to logs/<name>.log; seconds into parts[name]."""
    start = time.perf_counter()
    with open(logs / f"{name}.log", "w") as out:
        rc = subprocess.call(cmd, cwd=REPO, env=stage_env(), stdout=out, stderr=subprocess.STDOUT)
    parts[name] = {"s": time.perf_counter() - start, "rc": rc}
    if rc != 0:
        raise Failed(f"{name} exited {rc}: {tail(logs / f'{name}.log')}")


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def read_records(step_log: Path) -> list[dict]:
    if not step_log.is_file():
        return []
    text = step_log.read_text()
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def distill_process(spec: dict, spec_file: Path, logs: Path, name: str, parts: dict, kill_at: int | None) -> int:
    """Start the distill child; with `kill_at`, SIGKILL it once it has recorded that step. Returns its exit code."""
    spec_file.write_text(json.dumps({**spec, "hold_at_step": kill_at}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--distill-child", str(spec_file)]
    start = time.perf_counter()
    with open(logs / f"{name}.log", "w") as out:
        child = subprocess.Popen(cmd, cwd=REPO, env=stage_env(), stdout=out, stderr=subprocess.STDOUT)
        pid_records = lambda: [r for r in read_records(Path(spec["step_log"])) if r["pid"] == child.pid]  # noqa: E731
        while child.poll() is None:
            if kill_at is not None and any(r.get("step") == kill_at for r in pid_records()):
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                break
            time.sleep(0.05)
    parts[name] = {"s": time.perf_counter() - start, "rc": child.returncode, "pid": child.pid}
    return child.returncode


def checkpoint_step(checkpoint_dir: Path) -> int | None:
    from safetensors import safe_open

    from stages.distill.checkpoint import CHECKPOINT_FILE

    path = checkpoint_dir / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as fh:
        return int((fh.metadata() or {})["step"])


def phase_statistics(records: list[dict], config, real_config) -> dict:
    """Per-phase step statistics and the 35 000-step extrapolation (module docstring)."""
    import numpy as np

    steps = [r for r in records if r["event"] == "step"]
    by_pid: dict[int, list[dict]] = {}
    for r in steps:
        by_pid.setdefault(r["pid"], []).append(r)
    real_knots = [0, *real_config.sds_resolution.milestones, real_config.num_steps]
    knots = [0, *config.sds_resolution.milestones, config.num_steps]
    phases = []
    for p, (lo, hi) in enumerate(itertools.pairwise(knots)):
        rows, occupancy, after_ckpt, peaks_alloc, peaks_resv, samples = [], [], [], [], [], []
        for pid_steps in by_pid.values():
            for i, (prev, r) in enumerate(itertools.pairwise(pid_steps)):
                index = r["step"] - 1
                if not lo <= index < hi:
                    continue
                peaks_alloc.append(r.get("peak_allocated_gib", 0.0))
                peaks_resv.append(r.get("peak_reserved_gib", 0.0))
                samples.append(r["samples_per_ray"])
                if i < SKIP_PHASE_START or index < lo + SKIP_PHASE_START:
                    continue  # a process's or a phase's first steps compile kernels
                dt = r["t"] - prev["t"]
                if r["after_checkpoint"] and not r["occupancy_update"]:
                    after_ckpt.append(dt)
                elif r["occupancy_update"] and not r["after_checkpoint"]:
                    occupancy.append(dt)
                elif not (r["after_checkpoint"] or r["occupancy_update"]):
                    rows.append(dt)
        median = float(np.median(rows)) if rows else None
        real_lo, real_hi = real_knots[p], real_knots[p + 1]
        every = PAPER_CADENCE["occupancy_update_every_steps"]
        phase = {
            "sds_px": config.sds_resolution(lo),
            "steps": [lo, hi],
            "real_steps": [real_lo, real_hi],
            "opaque_on_from": next((s for s in range(lo, hi) if config.loss_weights.opaque(s) > 0), None),
            "timed_steps": len(rows),
            "s_per_step": median,
            "s_per_step_mean": float(np.mean(rows)) if rows else None,
            "step_times_s": rows,
            "occupancy_extra_s": float(np.median(occupancy)) - median if occupancy and median else None,
            "checkpoint_extra_s": float(np.median(after_ckpt)) - median if after_ckpt and median else None,
            "peak_allocated_gib": max(peaks_alloc, default=None),
            "peak_reserved_gib": max(peaks_resv, default=None),
            "samples_per_ray_median": float(np.median(samples)) if samples else None,
            "real_occupancy_updates": len(range(real_lo + (-real_lo) % every, real_hi, every)),
        }
        phases.append(phase)
    return {"phases": phases}


def extrapolate(phases: list[dict], first: dict, last_step: dict, done: dict, start: dict, real_config) -> dict:
    """The 35 000-step wall time (module docstring)."""
    import numpy as np

    training = sum((p["real_steps"][1] - p["real_steps"][0]) * (p["s_per_step"] or 0.0) for p in phases)
    occupancy = sum(p["real_occupancy_updates"] * max(0.0, p["occupancy_extra_s"] or 0.0) for p in phases)
    extras = [p["checkpoint_extra_s"] for p in phases if p["checkpoint_extra_s"] is not None]
    checkpoint_extra = max(0.0, float(np.median(extras))) if extras else 0.0
    every = PAPER_CADENCE["checkpoint_every_steps"]
    saves = -(-real_config.num_steps // every)  # every 500th step and the last
    startup = start["imported_s"] + first["t"] - start["t"] - (phases[0]["s_per_step"] or 0.0)
    export = done["t"] - last_step["t"]
    total = training + occupancy + saves * checkpoint_extra + startup + export
    return {
        "total_s": total,
        "total_h": total / 3600,
        "training_s": training,
        "occupancy_updates_s": occupancy,
        "checkpoints_s": saves * checkpoint_extra,
        "checkpoint_saves": saves,
        "startup_s": startup,
        "export_s": export,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/distill.yaml", help="the recipe to compress")
    parser.add_argument("--runtime", type=Path, default=None, help="run-time file (configs/runtime.yaml)")
    parser.add_argument("--phase-steps", type=int, nargs="+", default=None, help="steps per resolution segment")
    parser.add_argument("--occupancy-every", type=int, default=None, help="occupancy update cadence (paper: 16)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint cadence (paper: 500)")
    parser.add_argument("--kill-after", type=int, default=None, help="step after which the run is killed")
    parser.add_argument("--workdir", type=Path, default=Path("out/production_run"), help="emptied first")
    parser.add_argument("--json", type=Path, default=Path("out/production_run.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (tests only)")
    parser.add_argument("--distill-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.distill_child:
        distill_child(args.distill_child)
        return {}
    phase_steps = args.phase_steps or ([2, 2, 4] if args.smoke else [32, 32, 48])
    occupancy_every = args.occupancy_every or (2 if args.smoke else 8)
    checkpoint_every = args.checkpoint_every or (3 if args.smoke else 12)  # 12: most saves fall between updates
    runtime = args.runtime or REPO / ("configs/tiny/runtime.yaml" if args.smoke else "configs/runtime.yaml")
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    result: dict = {"smoke": args.smoke, "config": str(args.config), "runtime": str(runtime), "parts": {}}
    parts = result["parts"]

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    try:
        run_benchmark(args, result, parts, work, logs, runtime, phase_steps, occupancy_every, checkpoint_every, save)
    except Exception as err:  # noqa: BLE001 - recorded in the JSON with what was measured before it
        result["error"] = str(err) if isinstance(err, Failed) else f"{type(err).__name__}: {err}"
        print(f"production_run: FAILED: {result['error']}", file=sys.stderr)
    save()
    print_summary(result)
    return result


def run_benchmark(args, result, parts, work, logs, runtime, phase_steps, occupancy_every, checkpoint_every, save):
    import torch
    import yaml

    from stages.common.config import config_changes, load_config, load_config_data, validate_config
    from stages.distill import DistillConfig

    result["environment"] = {  # the GPU's name comes from the distill child (this process leaves CUDA alone)
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }
    py = sys.executable
    from stages.distill.export import require_mesh_libraries

    require_mesh_libraries()  # the distill stage checks it too, but only after the weights are written
    # 1. Weights.
    start = time.perf_counter()
    weights = (write_tiny_weights if args.smoke else write_full_size_weights)(work / "weights")
    parts["weights"] = {"s": time.perf_counter() - start}
    save()
    # 2-3. preprocess and mvgen of the bundled example.
    pre, mv = work / "preprocess", work / "mvgen"
    pre_cfg = REPO / ("configs/tiny/preprocess.yaml" if args.smoke else "configs/preprocess.yaml")
    pre_cmd = [py, "-m", "stages.preprocess", "--config", str(pre_cfg), "--input", str(EXAMPLE_INPUT)]
    pre_cmd += ["--output", str(pre), "--subject", "fox", "--folder-fps", "8", "--framing", "keep"]
    if args.smoke:
        from tests.mvgen.tiny import IMAGE_PX

        pre_cmd += ["--size-px", str(IMAGE_PX)]
    run_stage("preprocess", pre_cmd, logs, parts)
    mv_cfg = REPO / ("configs/tiny/mvgen.yaml" if args.smoke else "configs/mvgen.yaml")
    mv_cmd = [py, "-m", "stages.mvgen", "--config", str(mv_cfg), "--input", str(pre), "--weights"]
    mv_cmd += [str(weights["fourdm"]), "--output", str(mv), "--num-inference-steps", "2"]
    mv_cmd += [] if args.smoke else ["--dtype", "bfloat16"]
    run_stage("mvgen", mv_cmd, logs, parts)
    save()
    # 4. The compressed config.
    data = load_config_data(args.config)
    if args.smoke:
        data = smoke_sizes(data)
    real_config = validate_config(DistillConfig, data, source=str(args.config))
    compressed = compress_config(data, phase_steps, occupancy_every=occupancy_every, checkpoint_every=checkpoint_every)
    config_file = work / "distill.yaml"
    config_file.write_text(yaml.safe_dump(compressed, sort_keys=False, allow_unicode=True))
    config = load_config(DistillConfig, config_file)
    result["compressed_config"] = {
        "file": str(config_file),
        "phase_steps": phase_steps,
        "changes": [[k, a, b] for k, a, b in config_changes(real_config.model_dump(mode="json"), compressed)],
    }
    last_lo = ([0, *config.sds_resolution.milestones])[-1]
    ckpt_step = next(s for s in range(last_lo + 1, config.num_steps + 1) if s % checkpoint_every == 0)
    kill_at = args.kill_after or ckpt_step + max(1, checkpoint_every // 2)
    if not ckpt_step < kill_at < config.num_steps:
        raise Failed(f"no checkpoint in the last phase before the kill step {kill_at}: lengthen its --phase-steps")
    # 5. distill: killed, resumed.
    step_log = work / "distill_steps.jsonl"
    spec = {
        "config": str(config_file),
        "runtime": str(runtime),
        "input": str(mv),
        "preprocess": str(pre),
        "weights": str(weights["fourdm"]),
        "lpips": str(weights["lpips"]),
        "output": str(work / "distill"),
        "checkpoint": str(work / "checkpoint"),
        "step_log": str(step_log),
    }
    rc = distill_process(spec, work / "distill_spec.json", logs, "distill_killed", parts, kill_at)
    if rc != -signal.SIGKILL:
        raise Failed(f"the distill run ended with {rc} before the kill: {tail(logs / 'distill_killed.log')}")
    killed_records = [r for r in read_records(step_log) if r["pid"] == parts["distill_killed"]["pid"]]
    resume = {
        "killed_after_step": max(r["step"] for r in killed_records if r["event"] == "step"),
        "checkpoint_step": checkpoint_step(work / "checkpoint"),
        "output_absent_after_kill": not (work / "distill" / "manifest.json").exists(),
    }
    result["kill_resume"] = resume
    result.update(phase_statistics(killed_records, config, real_config))  # replaced once the run has finished
    save()
    rc = distill_process(spec, work / "distill_spec.json", logs, "distill_resumed", parts, None)
    if rc != 0:
        raise Failed(f"the resumed distill run exited {rc}: {tail(logs / 'distill_resumed.log')}")
    records = read_records(step_log)
    resumed = [r for r in records if r["pid"] == parts["distill_resumed"]["pid"]]
    resumed_steps = [r["step"] for r in resumed if r["event"] == "step"]
    resume["resumed_first_step"] = resumed_steps[0]
    resume["resumed_last_step"] = resumed_steps[-1]
    resume["resumed_log_line"] = next(
        (line for line in (logs / "distill_resumed.log").read_text().splitlines() if "resumed from" in line), None
    )
    resume["final_checkpoint_step"] = checkpoint_step(work / "checkpoint")
    # 6. eval.
    ev = work / "eval"
    ev_cfg = REPO / ("configs/tiny/eval.yaml" if args.smoke else "configs/eval.yaml")
    ev_cmd = [py, "-m", "stages.eval", "--config", str(ev_cfg), "--prediction", str(work / "distill"), "--mvgen"]
    ev_cmd += [str(mv), "--ground-truth", str(EXAMPLE_GROUND_TRUTH), "--weights", str(weights["eval"])]
    ev_cmd += ["--output", str(ev)]
    run_stage("eval", ev_cmd, logs, parts)
    # 7. Every artifact as the next stage reads it.
    from stages.common.artifacts import load_any_manifest

    artifacts = {}
    for name, directory in (("preprocess", pre), ("mvgen", mv), ("distill", work / "distill"), ("eval", ev)):
        try:
            manifest = load_any_manifest(directory)
        except Exception as err:  # noqa: BLE001 - any refusal is the finding
            raise Failed(f"{name} artifact refused: {err}") from None
        artifacts[name] = {"manifest": type(manifest).__name__, "files": len(manifest.files)}
    distill = load_any_manifest(work / "distill")
    artifacts["distill"].update(
        num_steps=distill.num_steps,
        meshes=len(distill.meshes.file_list()) if distill.meshes else 0,
        preview=distill.preview_file,
        metrics=distill.metrics,
    )
    evaluation = load_any_manifest(ev)
    artifacts["eval"].update(
        metrics=evaluation.metrics, skipped={k: v.model_dump() for k, v in evaluation.skipped.items()}
    )
    result["artifacts"] = artifacts
    # 8. Per-phase numbers and the extrapolation.
    stats = phase_statistics(records, config, real_config)
    result.update(stats)
    first_run = [r for r in records if r["pid"] == parts["distill_killed"]["pid"]]
    start_rec = next(r for r in first_run if r["event"] == "start")
    result["environment"]["gpu"] = start_rec["gpu"]
    first_step = next(r for r in first_run if r["event"] == "step")
    result["setup"] = {
        "first_step_s": first_step["t"] - start_rec["t"] + start_rec["imported_s"],
        "peak_allocated_gib": first_step.get("peak_allocated_gib"),
        "peak_reserved_gib": first_step.get("peak_reserved_gib"),
    }
    done = next(r for r in resumed if r["event"] == "done")
    last_step = [r for r in resumed if r["event"] == "step"][-1]
    result["extrapolated_35k"] = extrapolate(stats["phases"], first_step, last_step, done, start_rec, real_config)


def smoke_sizes(data: dict) -> dict:
    """The paper's schedule with the tiny config's sizes (configs/tiny/distill.yaml) and three tiny resolutions."""
    import yaml

    tiny = yaml.safe_load((REPO / "configs/tiny/distill.yaml").read_text())
    out = {**data, "field": {**data["field"], **tiny["field"]}, "renderer": {**data["renderer"], **tiny["renderer"]}}
    for key in ("output_size_px", "preview_segments", "deterministic", "device"):
        out[key] = tiny[key]
    out["guidance"] = {**data["guidance"], "dtype": tiny["guidance"]["dtype"]}
    out["sds_resolution"] = {**data["sds_resolution"], "sizes_px": [8, 12, 16]}
    out["mesh"] = {**data["mesh"], "resolution": 16}
    return out


def print_summary(result: dict) -> None:
    def fmt(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    env = result.get("environment", {})
    print(f"{env.get('gpu')} | torch {env.get('torch')} | CUDA {env.get('cuda')} | {result['config']}")
    for name, part in result["parts"].items():
        print(f"  {name:<16} {part['s']:8.1f} s")
    if "kill_resume" in result:
        kr = result["kill_resume"]
        print(
            f"  killed after step {kr['killed_after_step']}, checkpoint at {kr['checkpoint_step']}, "
            f"resumed at step {kr.get('resumed_first_step')}, finished at {kr.get('resumed_last_step')}"
        )
    print(
        f"{'phase':>6} {'steps':>11} {'real':>13} {'s/step':>7} {'mean':>7} {'occ+':>6} {'ckpt+':>6} "
        f"{'peak GiB':>8} {'resv GiB':>8} {'smp/ray':>7}"
    )
    for p in result.get("phases", []):
        print(
            f"{p['sds_px']:>5}² {str(p['steps']):>11} {str(p['real_steps']):>13} {fmt(p['s_per_step']):>7} "
            f"{fmt(p['s_per_step_mean']):>7} {fmt(p['occupancy_extra_s'], '.2f'):>6} "
            f"{fmt(p['checkpoint_extra_s'], '.2f'):>6} {fmt(p['peak_allocated_gib'], '.1f'):>8} "
            f"{fmt(p['peak_reserved_gib'], '.1f'):>8} {fmt(p['samples_per_ray_median'], '.1f'):>7}"
        )
    if "extrapolated_35k" in result:
        e = result["extrapolated_35k"]
        print(
            f"35k-step extrapolation: {e['total_h']:.2f} h (training {e['training_s']:.0f} s, occupancy "
            f"{e['occupancy_updates_s']:.0f} s, {e['checkpoint_saves']} checkpoints {e['checkpoints_s']:.0f} s, "
            f"startup {e['startup_s']:.0f} s, export {e['export_s']:.0f} s)"
        )
    if "error" in result:
        print(f"FAILED: {result['error']}")


if __name__ == "__main__":
    raise SystemExit(1 if "error" in main() else 0)
