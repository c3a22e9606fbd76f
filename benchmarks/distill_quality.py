"""Distill quality against ground truth over wall time: recipes side by side on one subject (spec §6 metrics).

For a subject with ground truth (a render-stage artifact: the 4 orthogonal GT views, optionally a second one at novel
azimuths such as 45/135/225/315°, views no anchor covers), each recipe (a distill config) runs the real distill stage
(`stages.distill.run`: model loading, optimisation, renders, exports) while an observer renders the field at every GT
camera every `--eval-every` steps and scores it: PSNR, SSIM (eval's definitions, bicubic to `--image-size`) and
foreground IoU (opacity > 0.5 vs GT alpha > 0.5). The observer's own time is subtracted, so `train_s` and `stage_s`
are what the stage costs. `--budget-s` stops a recipe's optimisation early (e.g. the paper's 35000-step recipe) and
records how far it got. The mvgen views' own scores at the 4 GT cameras are the bar a distilled field should reach;
where the mvgen artifact has views at the novel cameras too (configs/demo-gpu/mvgen.yaml's 45° offsets), their
scores there are recorded as `mvgen_novel`.

`--oracle-size N` replaces the mvgen artifact by the ground truth's own 4 views at N px ("oracle mvgen"): the field is
then fitted to known answers and must reproduce them.

A recipe may be the 4D Gaussians (ours, `field.representation: gaussians`): e.g. `--recipe
gaussians=configs/demo-gpu/distill_gaussians.yaml` beside the NeRF recipes; the observer renders either trainer.

    python benchmarks/distill_quality.py --subject fox --preprocess data/demo/preprocess/fox \\
        --mvgen data/demo/mvgen/fox --ground-truth examples/fox/render --novel-ground-truth data/render/fox_novel \\
        --weights weights/demo/fourdm --recipe fast=configs/demo-gpu/distill.yaml \\
        --recipe paper=configs/distill.yaml --budget-s 600 --output out/distill_quality/fox

Writes `<output>/distill_quality.json` (environment, mvgen scores, one curve per recipe), `curves.png` (PSNR and
SSIM against seconds, one line per recipe, the mvgen bar dashed) and `grid.png` (per GT camera: GT | mvgen | each
recipe's final render, middle frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.distill_step import environment  # noqa: E402
from stages.common.artifacts import MvgenManifest, PreprocessManifest, RenderManifest, ViewSet, git_sha  # noqa: E402
from stages.common.cameras import OrbitCamera, load_cameras, save_cameras  # noqa: E402
from stages.common.config import load_config_data, validate_config  # noqa: E402
from stages.common.image_io import VIEW_FRAME_TEMPLATE, composite_on_white, read_rgba, write_rgba  # noqa: E402
from stages.distill import DistillConfig  # noqa: E402
from stages.distill import run as run_distill  # noqa: E402
from stages.distill.gaussians import GaussianTrainer  # noqa: E402
from stages.distill.trainer import Trainer  # noqa: E402
from stages.eval.metrics.psnr_ssim import compute_psnr, compute_ssim  # noqa: E402
from stages.eval.pairing import same_direction  # noqa: E402

log = logging.getLogger("distill_quality")


class BudgetReached(Exception):
    """Raised by the observer to end a recipe's optimisation at its time budget."""


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) or (N, H, W) → the same at size × size, PIL bicubic (eval's protocol)."""
    if images.shape[1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images])


class GroundTruth:
    """The GT views of one or more render artifacts at the frames of an mvgen artifact (by source index)."""

    def __init__(self, directories: list[Path], source_indices: list[int]) -> None:
        self.cameras: list[OrbitCamera] = []
        rgba: list[np.ndarray] = []
        for directory in directories:
            manifest = RenderManifest.load(directory)
            frames = [manifest.gt.source_indices.index(s) for s in source_indices]
            for cam in load_cameras(directory / manifest.gt.cameras_file):
                self.cameras.append(cam)
                rgba.append(np.stack([read_rgba(manifest.gt.frame_path(directory, cam.view, f)) for f in frames]))
        self.rgba = np.stack(rgba)  # (V, F, H, W, 4) uint8
        self.white = np.stack([[composite_on_white(im) for im in view] for view in self.rgba])  # (V, F, H, W, 3)


def score(pred: np.ndarray, pred_alpha: np.ndarray, gt: GroundTruth, views: list[int], size: int) -> dict:
    """PSNR / SSIM / IoU of uint8 renders (len(views), F, h, w, 3) on white vs the GT at `views`, at `size` px."""
    flat_pred = resize(pred.reshape(-1, *pred.shape[2:]), size)
    flat_gt = resize(gt.white[views].reshape(-1, *gt.white.shape[2:]), size)
    unit_pred = torch.from_numpy(flat_pred).permute(0, 3, 1, 2).float() / 255.0
    unit_gt = torch.from_numpy(flat_gt).permute(0, 3, 1, 2).float() / 255.0
    psnr, _ = compute_psnr(unit_pred, unit_gt)
    ssim = torch.cat([compute_ssim(unit_pred[i : i + 8], unit_gt[i : i + 8]) for i in range(0, len(unit_pred), 8)])
    per_view = len(flat_pred) // len(views)
    out = {
        "psnr": float(psnr.mean()),
        "ssim": float(ssim.mean()),
        "psnr_per_view": [float(p.mean()) for p in psnr.split(per_view)],
    }
    if pred_alpha is not None:
        mask_pred = resize(pred_alpha.reshape(-1, *pred_alpha.shape[2:]), size) > 127
        mask_gt = resize(np.ascontiguousarray(gt.rgba[views][..., 3]).reshape(-1, *gt.rgba.shape[2:4]), size) > 127
        inter, union = (mask_pred & mask_gt).sum(), (mask_pred | mask_gt).sum()
        out["iou"] = float(inter / max(union, 1))
    return out


def views_at(cameras: list[OrbitCamera], targets: list[OrbitCamera], tolerance_deg: float = 0.5) -> list[int] | None:
    """The view of the camera in `cameras` at each target's azimuth and elevation; None if a target has none."""
    found = []
    for target in targets:
        match = [c.view for c in cameras if same_direction(c, target, tolerance_deg)]
        if not match:
            return None
        found.append(match[0])
    return found


def read_views(mvgen: MvgenManifest, mvgen_dir: Path, views: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """An mvgen artifact's `views`, every frame: (V, F, h, w, 3) uint8 on white and (V, F, h, w) uint8 alpha."""
    rgba = np.stack(
        [[read_rgba(mvgen.views.frame_path(mvgen_dir, v, f)) for f in range(mvgen.views.num_frames)] for v in views]
    )
    return np.stack([[composite_on_white(im) for im in view] for view in rgba]), rgba[..., 3]


def render_views(
    trainer: Trainer | GaussianTrainer, cameras: list[OrbitCamera], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(V, F, size, size, 3) uint8 on white and (V, F, size, size) uint8 opacity of every camera × frame."""
    rgb, alpha = [], []
    with torch.no_grad():
        for frame in range(trainer.num_frames):
            out = trainer.render(cameras, [float(trainer.times[frame])], size, stratified=False)
            rgb.append(out.rgb.reshape(len(cameras), size, size, 3).clamp(0, 1).cpu())  # (V, H, W, 3)
            alpha.append(out.opacity.reshape(len(cameras), size, size).clamp(0, 1).cpu())
    to_u8 = lambda x: (torch.stack(x, 1) * 255).round().to(torch.uint8).numpy()  # noqa: E731
    return to_u8(rgb), to_u8(alpha)


def write_oracle_mvgen(render_dir: Path, preprocess_dir: Path, output_dir: Path, size: int) -> Path:
    """An mvgen artifact holding the render artifact's 4 GT views at `size` px, at the preprocess frames."""
    source = PreprocessManifest.load(preprocess_dir)
    truth = RenderManifest.load(render_dir)
    cameras = load_cameras(render_dir / truth.gt.cameras_file)
    views = ViewSet(
        num_views=len(cameras),
        num_frames=source.num_frames,
        size_px=size,
        frame_template=VIEW_FRAME_TEMPLATE,
        cameras_file="cameras.json",
        source_indices=source.source_indices,
    )
    for cam in cameras:
        for f, s in enumerate(source.source_indices):
            image = read_rgba(truth.gt.frame_path(render_dir, cam.view, truth.gt.source_indices.index(s)))
            write_rgba(views.frame_path(output_dir, cam.view, f), resize(image[None], size)[0])
    save_cameras(output_dir / views.cameras_file, cameras)
    manifest = MvgenManifest(
        subject=source.subject,
        files=views.file_list(),
        config_sha256="oracle",
        code_version=git_sha(),
        upstream={"preprocess": source.sha256(preprocess_dir)},
        views=views,
        prompt=source.prompt,
        fps=source.fps,
    )
    manifest.write(output_dir)
    return output_dir


def load_recipe(path: Path, overrides: list[str], device: str) -> DistillConfig:
    """A distill config (overlays merged) with its set's run-time file (`runtime.yaml` beside it, else the root
    one) and `dotted.key=yaml-value` overrides."""
    data = load_config_data(path)
    runtime = path.parent / "runtime.yaml"
    runtime = runtime if runtime.is_file() else REPO / "configs/runtime.yaml"
    data["runtime"] = (yaml.safe_load(runtime.read_text()) or {}).get("distill", {})
    for item in overrides:
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    data["device"] = device
    return validate_config(DistillConfig, data, source=str(path))


def run_recipe(name: str, config: DistillConfig, args: argparse.Namespace, gt: GroundTruth, mvgen_dir: Path) -> dict:
    """One recipe through the distill stage with the observer; its curve and timings."""
    curve: list[dict] = []
    observed = 0.0  # seconds spent in the observer, subtracted from the stage's time
    start = time.perf_counter()
    size = config.output_size_px
    views4 = list(range(4))
    novel = list(range(4, len(gt.cameras)))
    finals: dict[str, np.ndarray] = {}

    def observe(trainer: Trainer | GaussianTrainer) -> None:
        nonlocal observed
        last = trainer.step == config.num_steps
        train_s = time.perf_counter() - start - observed
        over = args.budget_s is not None and train_s > args.budget_s
        if trainer.step % args.eval_every != 0 and not last and not over:
            return
        t0 = time.perf_counter()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        rgb, alpha = render_views(trainer, gt.cameras, size)
        point = {
            "step": trainer.step,
            "train_s": round(train_s, 2),
            "gt": score(rgb[:4], alpha[:4], gt, views4, args.image_size),
        }
        if novel:
            point["novel"] = score(rgb[4:], alpha[4:], gt, novel, args.image_size)
        curve.append(point)
        finals["rgb"] = rgb
        log.info("%s step %d %.1fs: %s", name, trainer.step, train_s, json.dumps(point["gt"]))
        observed += time.perf_counter() - t0
        if over and not last:
            raise BudgetReached

    output = Path(args.output) / "runs" / name
    completed = True
    try:
        run_distill(
            config,
            input_dir=mvgen_dir,
            preprocess_dir=Path(args.preprocess),
            weights_dir=Path(args.weights),
            lpips_dir=Path(args.lpips),
            output_dir=output,
            on_step=observe,
        )
    except BudgetReached:
        completed = False
    stage_s = time.perf_counter() - start - observed
    best = max(curve, key=lambda p: p["gt"]["psnr"]) if curve else None
    return {
        "config": config.model_dump(mode="json"),
        "completed": completed,
        "num_steps": config.num_steps,
        "stage_s": round(stage_s, 2),
        "curve": curve,
        "final": curve[-1] if curve else None,
        "best": best,
        "peak_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
    }, finals.get("rgb")


def machine(device: str) -> dict:
    """distill_step's machine record; a CPU run names the CPU instead of calling itself a smoke run."""
    cuda = torch.cuda.is_available() and device != "cpu"
    record = environment(torch.device("cuda" if cuda else "cpu"))
    if not cuda:
        record["gpu"] = f"none (CPU, {os.cpu_count()} cores)"
    return record


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("psnr", "ssim"), strict=True):
        for name, rec in result["recipes"].items():
            xs = [p["train_s"] for p in rec["curve"]]
            ax.plot(xs, [p["gt"][metric] for p in rec["curve"]], marker=".", label=f"{name} (GT cameras)")
            if rec["curve"] and "novel" in rec["curve"][0]:
                ax.plot(xs, [p["novel"][metric] for p in rec["curve"]], ls=":", label=f"{name} (novel azimuths)")
        if result.get("mvgen"):
            ax.axhline(result["mvgen"][metric], color="k", ls="--", label="mvgen views")
        ax.set_xlabel("optimisation seconds")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"distill quality vs time: {result['subject']} ({result['environment'].get('gpu', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", required=True)
    ap.add_argument("--preprocess", required=True, help="preprocess artifact of the subject")
    ap.add_argument("--mvgen", help="mvgen artifact (4DM views) of the subject")
    ap.add_argument(
        "--oracle-size", type=int, help="use the ground truth's 4 views at this size as the mvgen artifact"
    )
    ap.add_argument("--ground-truth", required=True, help="render artifact with the 4 orthogonal GT views")
    ap.add_argument("--novel-ground-truth", help="render artifact with GT views at novel azimuths")
    ap.add_argument("--weights", default="weights/demo/fourdm", help="4DM folder (read when a recipe uses SDS)")
    ap.add_argument("--lpips", default="weights/eval/lpips", help="LPIPS folder (read when a recipe uses it)")
    ap.add_argument("--recipe", action="append", required=True, help="NAME=CONFIG.yaml (repeat)")
    ap.add_argument("--set", action="append", default=[], help="NAME:dotted.key=yaml-value, a recipe override")
    ap.add_argument("--eval-every", type=int, default=50, help="steps between scores")
    ap.add_argument("--budget-s", type=float, help="stop each recipe's optimisation after this many seconds")
    ap.add_argument("--image-size", type=int, default=256, help="scoring resolution (eval's image_size_px)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    if args.oracle_size:
        mvgen_dir = write_oracle_mvgen(
            Path(args.ground_truth), Path(args.preprocess), out / "oracle_mvgen", args.oracle_size
        )
    elif args.mvgen:
        mvgen_dir = Path(args.mvgen)
    else:
        ap.error("one of --mvgen or --oracle-size is needed")
    mvgen = MvgenManifest.load(mvgen_dir)
    gt_dirs = [Path(args.ground_truth)] + ([Path(args.novel_ground_truth)] if args.novel_ground_truth else [])
    gt = GroundTruth(gt_dirs, mvgen.views.source_indices)

    mv_rgb, mv_alpha = read_views(mvgen, mvgen_dir, list(range(4)))
    result = {
        "subject": args.subject,
        "oracle": bool(args.oracle_size),
        "environment": machine(args.device),
        "code_version": git_sha(),
        "mvgen": score(mv_rgb, mv_alpha, gt, list(range(4)), args.image_size),
        "gt_azimuths_deg": [c.azimuth_deg for c in gt.cameras],
        "recipes": {},
    }
    log.info("mvgen views vs GT: %s", json.dumps(result["mvgen"]))
    novel_views = views_at(load_cameras(mvgen_dir / mvgen.views.cameras_file), gt.cameras[4:])
    if novel_views:  # an empty list without novel GT cameras
        novel_rgb, novel_alpha = read_views(mvgen, mvgen_dir, novel_views)
        novel = list(range(4, len(gt.cameras)))
        result["mvgen_novel"] = score(novel_rgb, novel_alpha, gt, novel, args.image_size)
        log.info("mvgen views vs GT at the novel cameras: %s", json.dumps(result["mvgen_novel"]))
    finals = {}
    for item in args.recipe:
        name, path = item.split("=", 1)
        overrides = [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == name]
        config = load_recipe(Path(path), overrides, args.device)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result["recipes"][name], finals[name] = run_recipe(name, config, args, gt, mvgen_dir)
        (out / "distill_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "curves.png")
    # Picture grid: one row per GT camera, middle frame: GT | mvgen (first 4 cameras) | each recipe.
    mid, cell = mvgen.views.num_frames // 2, 128
    rows = []
    for v in range(len(gt.cameras)):
        row = [resize(gt.white[v, mid][None], cell)[0]]
        row.append(resize(mv_rgb[v, mid][None], cell)[0] if v < 4 else np.full((cell, cell, 3), 255, np.uint8))
        row += [resize(f[v, mid][None], cell)[0] for f in finals.values() if f is not None]
        rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "grid.png")
    print(
        json.dumps({n: {"final": r["final"], "stage_s": r["stage_s"]} for n, r in result["recipes"].items()}, indent=1)
    )


if __name__ == "__main__":
    main()
