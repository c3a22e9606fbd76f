"""`make demo`'s pipeline (pipelines/demo/dvc.yaml + configs/demo/) agrees with itself and with the demo model."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from stages.common.config import StageConfig, config_layers, load_config
from stages.mvgen.training import TrainConfig

REPO = Path(__file__).resolve().parents[2]
DEMO_STAGES = ("preprocess", "mvgen", "distill", "eval")


def stage_config(stage: str) -> type[StageConfig]:
    return getattr(importlib.import_module(f"stages.{stage}"), f"{stage.capitalize()}Config")


def demo_dvc() -> dict:
    return yaml.safe_load((REPO / "pipelines/demo/dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", DEMO_STAGES)
def test_demo_stages_run_from_the_root_with_the_demo_config(stage):
    do = demo_dvc()[stage]["do"]
    cmd = " ".join(do["cmd"].split())
    assert do["wdir"] == "../.."
    assert cmd.startswith(f"python -m stages.{stage} --config configs/demo/{stage}.yaml")
    # The overlay and the paper's file it changes: editing either reruns the stage.
    assert do["params"] == [{str(p): None} for p in config_layers(Path(f"configs/demo/{stage}.yaml"))]
    assert do["params"] == [{f"configs/{stage}.yaml": None}, {f"configs/demo/{stage}.yaml": None}]
    # The run-time file (memory/speed only) is passed but never tracked: editing it reruns nothing.
    tracked = " ".join(str(d) for d in do["deps"]) + str(do["params"])
    assert "runtime.yaml" not in tracked
    if stage == "distill":
        assert "--runtime configs/demo/runtime.yaml" in cmd
    assert do["outs"] == [f"data/demo/{stage}/${{key}}"] and f"stages/{stage}" in do["deps"]
    if stage in ("mvgen", "distill"):
        assert "--weights weights/demo/fourdm" in cmd and "weights/demo/fourdm" in do["deps"]


def test_demo_configs_fit_the_demo_model():
    model = load_config(TrainConfig, REPO / "configs/demo/train_fourdm.yaml")
    load = lambda s: load_config(stage_config(s), REPO / "configs/demo" / f"{s}.yaml")  # noqa: E731
    assert load("preprocess").size_px == model.data.size_px == load("render").size_px
    assert load("preprocess").num_frames == model.data.num_frames
    # The demo model's unconditional branch is the empty caption (condition dropout empties it).
    assert load("mvgen").negative_prompt == "" and load("distill").guidance.negative_prompt == ""
    # No VGG16 weights can be shipped: the LPIPS anchor term is off, so distill never reads --lpips.
    assert load("distill").loss_weights.anchor_lpips == 0.0
    assert load("distill").cameras.num_views == 4 and load("mvgen").window_frames <= model.model.unet.motion_max_len


def test_demo_gpu_is_the_demo_model_on_cuda_with_the_papers_field_and_the_fast_recipe():
    """configs/demo-gpu: the demo model's sampling and losses on CUDA, the paper's field and renderer, and the fast
    recipe's GPU budget (8 mvgen views, more rays and steps) where the CPU demo keeps its minutes."""
    stages = {p.name for p in (REPO / "stages").iterdir() if (p / "__main__.py").is_file()}
    files = {p.stem: p for p in (REPO / "configs/demo-gpu").glob("*.yaml") if p.stem in stages}  # not recipe overlays
    assert set(files) == {"preprocess", "mvgen", "distill"}  # no eval: its weights are absent on the GPU machine
    configs = {s: load_config(stage_config(s), p) for s, p in files.items()}  # unknown keys / wrong types fail
    demo = {s: load_config(stage_config(s), REPO / "configs/demo" / f"{s}.yaml") for s in files}
    assert configs["preprocess"] == demo["preprocess"]
    gpu_mvgen = configs["mvgen"].model_copy(update={"device": "cpu", "azimuth_offsets_deg": (0.0,)})
    assert gpu_mvgen == demo["mvgen"]  # the demo model sampled the same way, one more set of views
    assert configs["mvgen"].device == configs["distill"].device == "cuda"
    gpu, cpu = configs["distill"], demo["distill"]
    assert gpu.field.backend == "triton" and gpu.loss_weights.anchor_lpips == 0  # LPIPS is never loaded
    production = load_config(stage_config("distill"), REPO / "configs/distill.yaml")
    box = {"blob_radius": cpu.field.blob_radius, "bbox_radius": cpu.field.bbox_radius}
    assert gpu.field == production.field.model_copy(update=box)
    assert gpu.renderer.model_copy(update={"occupancy_warmup_steps": 0}) == production.renderer.model_copy(
        update={"occupancy_warmup_steps": 0}
    )
    assert gpu.sds_resolution.sizes_px == [64]  # the demo model's 64²
    assert gpu.guidance == cpu.guidance and gpu.loss_weights == cpu.loss_weights and gpu.seed == cpu.seed
    views = len(configs["mvgen"].azimuth_offsets_deg) * 4
    anchors = [gpu.cameras.anchor_view, *gpu.cameras.extra_anchor_views]
    assert sorted(set(anchors)) == list(range(views))  # every mvgen view...
    assert all(anchors.count(v) == (2 if v < 4 else 1) for v in range(views))  # ...the orthogonal ones twice
    assert gpu.cameras.anchor_source == "input"  # the input video at the front camera
