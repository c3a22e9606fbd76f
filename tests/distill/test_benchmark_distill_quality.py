"""benchmarks/distill_quality.py runs the real stage on the CPU and scores it against ground truth (smoke size)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
from PIL import Image

from stages.common.config import load_config
from stages.preprocess import PreprocessConfig
from stages.preprocess import run as preprocess
from tests.distill.tiny import REPO

RENDER = REPO / "examples/fox/render"
RECON = [
    "loss_weights.sds=0",
    "loss_weights.anchor_lpips=0",
    "cameras.extra_anchor_views=[1, 2, 3]",
    "reconstruction.rays_per_step=256",
    "loss_weights.reconstruction_rgb={start_value: 1.0, end_value: 1.0}",
]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("distill_quality", REPO / "benchmarks/distill_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_recipes_are_scored_against_ground_truth_over_time(tmp_path):
    config = load_config(PreprocessConfig, REPO / "configs/demo/preprocess.yaml")
    config = config.model_copy(update={"size_px": 16, "folder_fps": 8.0, "framing": "keep"})
    preprocess(config, input_path=RENDER / "input", output_dir=tmp_path / "pre", subject="fox")
    out = tmp_path / "out"
    tiny = str(REPO / "configs/tiny/distill.yaml")
    args = ["--subject", "fox", "--preprocess", str(tmp_path / "pre"), "--ground-truth", str(RENDER)]
    args += ["--oracle-size", "16", "--image-size", "64", "--eval-every", "2", "--device", "cpu", "--output", str(out)]
    args += ["--recipe", f"a={tiny}", "--set", "a:num_steps=4"] + [x for s in RECON for x in ("--set", f"a:{s}")]
    load_benchmark().main(args)

    result = json.loads((out / "distill_quality.json").read_text())
    assert result["oracle"] and result["gt_azimuths_deg"] == [0.0, 90.0, 180.0, 270.0]
    # The oracle's own views are the ground truth at 16², scored at 64²: close to it, far from a blank image.
    assert result["mvgen"]["psnr"] > 22.0 and result["mvgen"]["iou"] > 0.6
    recipe = result["recipes"]["a"]
    assert recipe["completed"] and [p["step"] for p in recipe["curve"]] == [2, 4]
    assert recipe["config"]["reconstruction"]["rays_per_step"] == 256  # the override reached the stage
    final = recipe["final"]["gt"]
    assert 5.0 < final["psnr"] < 60.0 and len(final["psnr_per_view"]) == 4 and 0.0 <= final["iou"] <= 1.0
    assert 0.0 < recipe["curve"][0]["train_s"] <= recipe["curve"][1]["train_s"] <= recipe["stage_s"]
    assert json.loads((out / "runs/a/manifest.json").read_text())["num_steps"] == 4  # the real stage wrote it
    assert Image.open(out / "curves.png").size[0] > 0
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (4 * 128, 3 * 128, 3)  # per GT camera: GT | mvgen | the recipe


def test_a_budget_ends_a_recipe_early_and_says_so(tmp_path):
    config = load_config(PreprocessConfig, REPO / "configs/demo/preprocess.yaml")
    config = config.model_copy(update={"size_px": 16, "folder_fps": 8.0, "framing": "keep"})
    preprocess(config, input_path=RENDER / "input", output_dir=tmp_path / "pre", subject="fox")
    out = tmp_path / "out"
    args = ["--subject", "fox", "--preprocess", str(tmp_path / "pre"), "--ground-truth", str(RENDER)]
    args += ["--oracle-size", "16", "--image-size", "32", "--eval-every", "1000", "--budget-s", "0", "--device", "cpu"]
    args += ["--output", str(out), "--recipe", f"b={REPO / 'configs/tiny/distill.yaml'}", "--set", "b:num_steps=50"]
    args += [x for s in RECON for x in ("--set", f"b:{s}")]
    load_benchmark().main(args)
    recipe = json.loads((out / "distill_quality.json").read_text())["recipes"]["b"]
    assert not recipe["completed"] and [p["step"] for p in recipe["curve"]] == [1]
    assert not (out / "runs/b/manifest.json").exists()  # stopped before its exports: no artifact


def test_the_mvgen_views_at_the_novel_cameras_are_found_by_azimuth_and_elevation():
    from stages.common.cameras import OrbitCamera

    bench = load_benchmark()
    mvgen = [OrbitCamera.from_angles(v, a, 0.0, 1.1, 45.0) for v, a in enumerate((0, 90, 180, 270, 45, 135, 225, 315))]
    novel = [OrbitCamera.from_angles(4 + i, a, 0.0, 1.1, 45.0) for i, a in enumerate((45.0, 135.0, 225.0, -45.0))]
    assert bench.views_at(mvgen, novel) == [4, 5, 6, 7]  # −45° is 315°
    assert bench.views_at(mvgen[:4], novel) is None  # 4 orthogonal views: nothing to score there
    raised = [OrbitCamera.from_angles(4 + i, a, 15.0, 1.1, 45.0) for i, a in enumerate((45.0, 135.0, 225.0, 315.0))]
    assert bench.views_at(mvgen, raised) is None  # same azimuths, another elevation
