from __future__ import annotations

import os
from pathlib import Path
from subprocess import PIPE

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from stages.common.artifacts import git_sha
from stages.common.tracking import stage_run
from stages.preprocess import PreprocessConfig

REPO = Path(__file__).resolve().parents[2]


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


_RACER = """
import sys, time
from pathlib import Path
from stages.common.config import StageConfig
from stages.common.tracking import stage_run
import mlflow  # noqa: F401 - imported before the start line, so that both cross it together
Path(f"ready-{sys.argv[1]}").touch()
while len(list(Path().glob("ready-*"))) < 2:
    time.sleep(0.002)
with stage_run("preprocess", StageConfig(), subject=sys.argv[1]) as tracker:
    tracker.log_metrics({"x": 1.0})
"""


def test_runs_starting_at_once_on_a_new_sqlite_store_are_all_tracked(tmp_path, monkeypatch):
    """The store is created and migrated once (a lock), not by each run at the same time."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, f"s{i}"], env=env, cwd=tmp_path, stderr=PIPE) for i in (0, 1)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not any("tracking failed" in e for e in errors), errors  # every run reached the store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with stage_run("preprocess", PreprocessConfig(), subject="after"):
        pass
    runs = mlflow.search_runs(experiment_names=["fourd"], output_format="list")
    assert {r.data.tags["mlflow.runName"] for r in runs} == {"preprocess/s0", "preprocess/s1", "preprocess/after"}


def test_a_store_that_fails_during_the_stage_is_one_warning_and_the_stage_succeeds(tmp_path, monkeypatch, capsys):
    from stages.common.cli import cli_main
    from stages.preprocess import run
    from tests.synthetic import disc_frames, write_video

    write_video(tmp_path / "disc.mp4", disc_frames(12, 40, 30, radius=5)[0], fps=12)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", "./mlruns")

    monkeypatch.setattr(mlflow, "log_artifact", read_only)  # the manifest is logged after the output is in place
    argv = ["--config", str(REPO / "configs/tiny/preprocess.yaml"), "--input", str(tmp_path / "disc.mp4")]
    assert cli_main(run, PreprocessConfig, [*argv, "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "manifest.json").is_file()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "tracking failed" in line]
    assert len(warnings) == 1 and "Read-only file system" in warnings[0] and "Traceback" not in err
