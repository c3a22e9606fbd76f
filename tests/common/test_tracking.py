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


def test_a_stage_in_the_images_environment_records_its_commit_without_git_warnings(tmp_path):
    """No git in a stage image: the Dockerfile's environment gives MLflow and the manifest the build's commit, and
    MLflow's GitPython stays quiet (it printed "Bad git executable" three times)."""
    import subprocess
    import sys
    from pathlib import Path

    from stages.common.artifacts import PreprocessManifest
    from tests.test_docker_static import instructions

    repo = Path(__file__).resolve().parents[2]
    image_env = dict(
        pair.split("=", 1)
        for word, args in instructions(repo / "docker" / "Dockerfile.preprocess")
        if word == "ENV"
        for pair in args.split()
    )
    env = {"HOME": str(tmp_path), "PYTHONPATH": str(repo), "PATH": str(tmp_path / "no-git")}
    env.update(GIT_PYTHON_REFRESH=image_env["GIT_PYTHON_REFRESH"], FOURD_CODE_VERSION="0123abc")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "stages.preprocess", "--config", "configs/tiny/preprocess.yaml", "--subject", "fox"]
    cmd += ["--input", "examples/fox/render/input", "--output", str(tmp_path / "out"), "--framing", "keep"]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "git" not in proc.stderr.replace(str(tmp_path), "").lower(), proc.stderr
    assert PreprocessManifest.load(tmp_path / "out").code_version == "0123abc"
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])  # mlflow.set_tracking_uri would outlive the test
    (run,) = client.search_runs([client.get_experiment_by_name("fourd").experiment_id])
    assert run.info.run_name == "preprocess/fox" and run.data.tags["git_sha"] == "0123abc"
