"""The shipped demo model is reproducible from the repository: the training configs weights/demo/README.md tells
to run are the ones its training runs recorded: configs/demo/train_fourdm.yaml (`--minutes 9.2`) for the run from
scratch (training/summary_call2.json), configs/demo/finetune_fourdm.yaml for the fine-tune of its weights that
produced the shipped ones (training/summary.json).

The run from scratch recorded its recipe under the flat key names of the trainer's earlier config layout, and a
config_sha256 of that layout; the sectioned TrainConfig hashes differently, so the check is by value: every recorded
recipe value is the merged config's value of the key it moved to."""

from __future__ import annotations

import json
from pathlib import Path

from stages.mvgen.training.cli import parse_config
from stages.mvgen.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]

MOVED = {
    "batch_size": "schedule.batch_size",
    "learning_rate": "optim.learning_rate",
    "condition_dropout": "conditioning.condition_dropout",
    "focus_clip": "data.focus_clip",
    "focus_fraction": "data.focus_fraction",
    "vae_from": "vae_phase.reuse",
    "front_view_only": "data.front_view_only",
    "front_view_any_base": "data.front_view_any_base",
    "focus_any_base": "data.focus_any_base",
    "prediction_type": "model.prediction_type",
    "zero_terminal_snr": "model.zero_terminal_snr",
    "compile_unet": "optim.compile_unet",
}
"""Recorded recipe key → the key of configs/demo/train_fourdm.yaml that holds it."""


def value(config: dict, key: str):  # noqa: ANN201
    """The value of a dotted `section.name` key in a dumped TrainConfig."""
    section, name = key.split(".")
    return config[section][name]


def test_the_committed_demo_config_is_the_recorded_training_config():
    summary = json.loads((REPO / "weights/demo/training/summary_call2.json").read_text())
    config = parse_config(REPO / "configs/demo/train_fourdm.yaml", [], minutes=9.2).model_dump(mode="json")
    # A key the run did not record is an option added after it: the committed config must leave it at its default.
    assert set(summary["recipe"]) <= set(MOVED)
    assert {key: value(config, MOVED[key]) for key in summary["recipe"]} == summary["recipe"]
    defaults = TrainConfig().model_dump(mode="json")
    for key in set(MOVED) - set(summary["recipe"]):
        assert value(config, MOVED[key]) == value(defaults, MOVED[key]), key
    recorded = (summary["vae"]["steps"], summary["data"]["size_px"])
    assert (value(config, "vae_phase.steps"), value(config, "data.size_px")) == recorded
    assert value(config, "schedule.minutes") == 9.2
    # The demo recipe: the caption is what an unconditional window loses with its reference video.
    assert value(config, "conditioning.drop_with_reference") == "caption"


def test_the_committed_fine_tune_config_is_the_recorded_fine_tune():
    summary = json.loads((REPO / "weights/demo/training/summary.json").read_text())
    config = parse_config(REPO / "configs/demo/finetune_fourdm.yaml", []).model_dump(mode="json")
    recipe = summary["recipe"]
    assert recipe, "the fine-tune recorded no recipe"
    assert {key: value(config, key) for key in recipe} == recipe
    assert recipe["data.focus_any_base"] is True
    # It started from trained weights (their frozen VAE), not from scratch, at the demo model's size.
    assert "from" in summary["vae"]
    assert summary["data"]["size_px"] == config["data"]["size_px"]
