"""The distill stage and the quality benchmark with `field.representation: gaussians` (ours), on the CPU at tiny size:
the same artifact layout as the NeRF's, resumable, scored beside a NeRF recipe; the configs that select it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.common.artifacts import DistillManifest
from stages.common.config import config_layers, load_config, load_config_data, validate_config
from stages.common.errors import StageError
from stages.common.image_io import read_rgba
from stages.distill import DistillConfig, run
from stages.distill.gaussians import load_gaussians
from stages.distill.schedules import LinearSchedule
from stages.preprocess import PreprocessConfig
from stages.preprocess import run as preprocess
from tests.distill.test_benchmark_distill_quality import RECON, RENDER, load_benchmark
from tests.distill.tiny import REPO, make_upstream

TINY = load_config(DistillConfig, REPO / "configs/tiny/distill.yaml")
GAUSSIANS = TINY.model_copy(
    update={
        "field": TINY.field.model_copy(update={"representation": "gaussians"}),
        "gaussians": TINY.gaussians.model_copy(update={"num_gaussians": 64}),
        "reconstruction": TINY.reconstruction.model_copy(update={"rays_per_step": 256}),
        "loss_weights": TINY.loss_weights.model_copy(
            update={"orient": LinearSchedule.constant(0.0), "reconstruction_rgb": LinearSchedule.constant(1.0)}
        ),
    }
)
"""The tiny config with Gaussians: SDS through the tiny 4DM, the anchor loss with tiny LPIPS, the reconstruction term
and the opacity regularisers all on."""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, Path]:
    return make_upstream(tmp_path_factory.mktemp("distill_gaussians"))


def run_tiny(upstream, output_dir: Path, **extra) -> DistillManifest:
    return run(
        GAUSSIANS,
        input_dir=upstream["mvgen"],
        preprocess_dir=upstream["pre"],
        weights_dir=upstream["weights"],
        lpips_dir=upstream["lpips"],
        output_dir=output_dir,
        **extra,
    )


def test_the_stage_writes_a_gaussian_field_and_the_renders_eval_scores(upstream, tmp_path):
    out = tmp_path / "out"
    m = run_tiny(upstream, out, checkpoint_dir=tmp_path / "ckpt")
    assert DistillManifest.load(out) == m and m.representation == "gaussians" and m.num_steps == 2
    assert (m.renders.num_views, m.renders.num_frames, m.renders.size_px) == (4, 4, 16)
    for v in range(4):
        assert read_rgba(m.renders.frame_path(out, v, 0)).shape == (16, 16, 4)
    alpha = np.stack([read_rgba(m.renders.frame_path(out, v, 0))[..., 3] for v in range(4)])
    assert alpha.max() > 100  # the Gaussians are drawn
    assert (out / m.preview_file).stat().st_size > 0 and (out / m.input_view_template.format(frame=3)).is_file()
    assert m.occupancy_file is None and not (out / "occupancy.safetensors").exists()
    assert json.loads((out / m.field_config_file).read_text())["_class_name"] == "GaussianField4D"
    field = load_gaussians(out)
    assert field.num_gaussians == 64 and field.means.shape == (64, 3)
    assert {"loss/sds", "loss/anchor_lpips", "loss/reconstruction_rgb", "loss/sparsity", "psnr/input_view"} <= set(
        m.metrics
    )
    # A rerun with the checkpoint of the finished run resumes it: the same field, bit for bit, without training.
    again = run_tiny(upstream, tmp_path / "again", checkpoint_dir=tmp_path / "ckpt")
    assert (out / m.field_file).read_bytes() == (tmp_path / "again" / m.field_file).read_bytes()
    assert again.metrics["psnr/input_view"] == m.metrics["psnr/input_view"]


def test_gaussians_refuse_meshes_and_the_orientation_loss_with_one_clear_error(tmp_path):
    data = load_config_data(REPO / "configs/demo-gpu/distill_gaussians.yaml")
    validate_config(DistillConfig, data, source="gaussians")  # the recipe itself is valid
    with pytest.raises(StageError, match="mesh.enabled needs field.representation nerf"):
        validate_config(DistillConfig, {**data, "mesh": {**data["mesh"], "enabled": True}}, source="gaussians")
    orient = {**data["loss_weights"], "orient": {"start_value": 10.0, "end_value": 1000.0, "end_step": 10}}
    with pytest.raises(StageError, match="loss_weights.orient needs field.representation nerf"):
        validate_config(DistillConfig, {**data, "loss_weights": orient}, source="gaussians")


def test_the_gpu_gaussian_recipe_is_an_overlay_of_the_demo_gpu_fast_recipe_holding_only_its_changes():
    path = REPO / "configs/demo-gpu/distill_gaussians.yaml"
    assert config_layers(path)[-2:] == [REPO / "configs/demo-gpu/distill.yaml", path]
    config = load_config(DistillConfig, path)
    base = load_config(DistillConfig, REPO / "configs/demo-gpu/distill.yaml")
    assert config.field.representation == "gaussians" and config.gaussians.backend == "gsplat"
    assert base.field.representation == "nerf"  # the fast NeRF recipe is unchanged
    overlay = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "base"}
    base_data = base.model_dump(mode="json")
    for key, section in overlay.items():
        for name, value in section.items():
            assert base_data[key][name] != value, f"{key}.{name} repeats its base value"
    assert load_config(DistillConfig, REPO / "configs/distill.yaml").field.representation == "nerf"  # the paper's


def test_the_benchmark_scores_a_gaussian_recipe_beside_a_nerf_one(tmp_path):
    config = load_config(PreprocessConfig, REPO / "configs/demo/preprocess.yaml")
    config = config.model_copy(update={"size_px": 16, "folder_fps": 8.0, "framing": "keep"})
    preprocess(config, input_path=RENDER / "input", output_dir=tmp_path / "pre", subject="fox")
    out = tmp_path / "out"
    tiny = str(REPO / "configs/tiny/distill.yaml")
    args = ["--subject", "fox", "--preprocess", str(tmp_path / "pre"), "--ground-truth", str(RENDER)]
    args += ["--oracle-size", "16", "--image-size", "32", "--eval-every", "2", "--device", "cpu", "--output", str(out)]
    gaussian = [
        "field.representation=gaussians",
        "gaussians.num_gaussians=64",
        "loss_weights.orient={start_value: 0.0, end_value: 0.0}",
    ]
    for name, sets in (("nerf", RECON), ("gaussians", RECON + gaussian)):
        args += ["--recipe", f"{name}={tiny}", "--set", f"{name}:num_steps=2"]
        args += [x for s in sets for x in ("--set", f"{name}:{s}")]
    load_benchmark().main(args)
    recipes = json.loads((out / "distill_quality.json").read_text())["recipes"]
    assert recipes["gaussians"]["config"]["field"]["representation"] == "gaussians"
    for recipe in recipes.values():
        assert recipe["completed"] and [p["step"] for p in recipe["curve"]] == [2]
        assert 5.0 < recipe["final"]["gt"]["psnr"] < 60.0 and 0.0 <= recipe["final"]["gt"]["iou"] <= 1.0
    manifest = json.loads((out / "runs/gaussians/manifest.json").read_text())
    assert manifest["representation"] == "gaussians"
