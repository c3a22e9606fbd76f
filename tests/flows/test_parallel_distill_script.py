"""scripts/parallel_distill_gpu.sh and its config set configs/demo-gpu/ (the GPU run of issue #11) agree with the
demo they are made from: no GPU here, so only what can be checked without one."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from flows.workspace import config_set_files
from stages.common.config import load_config
from tests.flows.builders import REPO

pytest.importorskip("dvc")


def config_class(stage: str):  # noqa: ANN201
    import importlib

    return getattr(importlib.import_module(f"stages.{stage}.config"), f"{stage.capitalize()}Config")


def test_demo_gpu_is_the_demo_on_cuda_with_the_production_field():
    files = config_set_files(REPO, "demo-gpu")
    assert set(files) == {"preprocess", "mvgen", "distill"}  # no eval: its weights are absent on the GPU machine
    configs = {s: load_config(config_class(s), p) for s, p in files.items()}  # unknown keys / wrong types fail
    demo = {s: load_config(config_class(s), REPO / "configs/demo" / f"{s}.yaml") for s in files}
    assert configs["preprocess"] == demo["preprocess"]
    assert configs["mvgen"].model_copy(update={"device": "cpu"}) == demo["mvgen"]
    assert configs["mvgen"].device == configs["distill"].device == "cuda"
    gpu, cpu = configs["distill"], demo["distill"]
    assert gpu.field.backend == "triton" and gpu.loss_weights.anchor_lpips == 0  # LPIPS is never loaded
    production = load_config(config_class("distill"), REPO / "configs/distill.yaml")
    assert gpu.field == production.field.model_copy(update={"blob_radius": cpu.field.blob_radius})
    warmup = cpu.renderer.occupancy_warmup_steps
    assert gpu.renderer == production.renderer.model_copy(update={"occupancy_warmup_steps": warmup})
    assert gpu.sds_resolution.sizes_px == [64] and gpu.num_steps == cpu.num_steps  # the demo model's 64², its steps
    assert gpu.guidance == cpu.guidance and gpu.cameras == cpu.cameras and gpu.optimizer == cpu.optimizer
    assert gpu.loss_weights == cpu.loss_weights and gpu.seed == cpu.seed


def test_the_script_parses_and_names_what_it_needs():
    script = REPO / "scripts/parallel_distill_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for needed in (".carry/pipeline-whl", ".whl", "FOURD_TRACKING=off", "--parallel", "weights/eval/lpips", "git"):
        assert needed in text, needed
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "fox" in params["subjects"]  # the script's first subject
