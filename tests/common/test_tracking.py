from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from stages.common.artifacts import git_sha
from stages.common.tracking import stage_run
from stages.preprocess import PreprocessConfig


def only_run(name: str):
    runs = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("fourd").experiment_id], filter_string=f"tags.mlflow.runName = '{name}'"
    )
    assert len(runs) == 1, runs
    return runs[0]


def test_stage_run_logs_name_tags_params_and_metrics(mlflow_store):
    cfg = PreprocessConfig(size_px=64)
    with stage_run("preprocess", cfg, subject="fox") as tracker:
        tracker.log_metrics({"loss": 0.5}, step=3)
    run = only_run("preprocess/fox")
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "preprocess" and run.data.tags["subject"] == "fox"
    assert run.data.tags["dvc_stage"] == "preprocess@fox"
    assert run.data.tags["git_sha"] == git_sha()
    assert run.data.params["size_px"] == "64" and run.data.params["matting.backend"] == "border"
    assert run.data.metrics["loss"] == 0.5
    assert mlflow_store.as_uri() in mlflow.get_tracking_uri()


def test_stage_run_nests_under_the_parent_from_the_environment(monkeypatch):
    mlflow.set_experiment("fourd")
    with mlflow.start_run(run_name="flow/fox") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv("FOURD_PARENT_RUN_ID", parent_id)
    with stage_run("preprocess", PreprocessConfig(), subject="fox"):
        pass
    assert only_run("preprocess/fox").data.tags["mlflow.parentRunId"] == parent_id


def test_stage_run_marks_failures(monkeypatch):
    with pytest.raises(RuntimeError):
        with stage_run("preprocess", PreprocessConfig(), subject="bad"):
            raise RuntimeError("boom")
    assert only_run("preprocess/bad").info.status == "FAILED"


def test_stage_run_off_creates_nothing(monkeypatch):
    monkeypatch.setenv("FOURD_TRACKING", "off")
    with stage_run("preprocess", PreprocessConfig(), subject="quiet") as tracker:
        tracker.log_metrics({"x": 1.0})
        assert tracker.run_id is None
    assert mlflow.get_experiment_by_name("fourd") is None


def test_stage_run_rejects_unknown_mode(monkeypatch):
    from stages.common.errors import StageError

    monkeypatch.setenv("FOURD_TRACKING", "maybe")
    with pytest.raises(StageError, match="FOURD_TRACKING"):
        with stage_run("preprocess", PreprocessConfig(), subject="x"):
            pass
