"""One MLflow store, parent runs with their stages' metrics (flows/tracking.py, stages/common/tracking.py), checked
by reading a real SQLite store back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.builders import REPO

mlflow = pytest.importorskip("mlflow")

STAGE = """\
import sys, time
from pydantic import BaseModel
from stages.common.tracking import stage_run

class Config(BaseModel):
    steps: int = 3

for stage, value in (("preprocess", 1.5), ("eval", 21.9)):
    with stage_run(stage, Config(), subject="fox") as tracker:
        tracker.log_metrics({"psnr": value - 1}, step=0)
        tracker.log_metrics({"psnr": value}, step=1)
        time.sleep(0.05)
sys.exit(int(sys.argv[1]))
"""


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", **env}
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True)


def runs_of(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("fourd")
    return client.search_runs([exp.experiment_id])


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_wrapped_pipeline_run_is_a_parent_with_its_stages_metrics_and_durations(tmp_path, exit_code):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "stage.py").write_text(STAGE)
    wrapped = ["-m", "flows.tracking", "--name", "demo/fox", "--config-set", "demo", "--"]
    proc = run([*wrapped, sys.executable, "stage.py", str(exit_code)], {"MLFLOW_TRACKING_URI": uri}, tmp_path)
    assert proc.returncode == exit_code, proc.stderr  # the command's exit status is the wrapper's
    runs = runs_of(uri)
    (parent,) = [r for r in runs if r.info.run_name == "demo/fox"]
    assert parent.info.status == ("FINISHED" if exit_code == 0 else "FAILED")
    assert parent.data.tags["config_set"] == "demo" and parent.data.tags["git_sha"].startswith(
        subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    )
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {"preprocess/fox", "eval/fox"}
    metrics = parent.data.metrics
    assert metrics["preprocess/psnr"] == 1.5 and metrics["eval/psnr"] == 21.9  # each stage's latest value
    assert 0.05 <= metrics["eval/seconds"] < 60 and "preprocess/seconds" in metrics
    tags = mlflow.MlflowClient(uri).get_experiment_by_name("fourd").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs


def test_a_stage_logs_to_the_projects_store_whatever_its_working_directory(tmp_path):
    """`dvc repro` of a pipeline in a sub-folder, or a stage run by hand elsewhere: one store, the project's."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    (elsewhere / "stage.py").write_text(STAGE)
    env = {"DVC_ROOT": str(project), "MLFLOW_TRACKING_URI": ""}
    proc = run(["stage.py", "0"], env, elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert not (elsewhere / "mlflow.db").exists()
    assert {r.info.run_name for r in runs_of(f"sqlite:///{project / 'mlflow.db'}")} == {"preprocess/fox", "eval/fox"}


def test_ui_url_points_at_the_runs_of_experiment_fourd(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run(["-m", "flows.tracking", "--ui-url", "http://127.0.0.1:5000/"], {"MLFLOW_TRACKING_URI": uri}, tmp_path)
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("fourd")
    assert proc.stdout.strip() == f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs", proc.stderr
