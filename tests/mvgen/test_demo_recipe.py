"""The shipped demo model is reproducible from the repository: the training config weights/demo/README.md tells
to run (configs/demo/demo_model.yaml, `--minutes 9.2`) is the one its last training run recorded."""

from __future__ import annotations

import json
from pathlib import Path

from stages.common.config import config_sha256, load_config
from stages.mvgen.training.demo_config import DemoModelConfig

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_demo_config_is_the_recorded_training_config():
    summary = json.loads((REPO / "weights/demo/training/summary.json").read_text())
    config = load_config(DemoModelConfig, REPO / "configs/demo/demo_model.yaml").model_copy(update={"minutes": 9.2})
    assert {key: getattr(config, key) for key in summary["recipe"]} == summary["recipe"]
    assert (config.vae_steps, config.size_px) == (summary["vae"]["steps"], summary["data"]["size_px"])
    assert config_sha256(config) == summary["config_sha256"]
