"""A plain `dvc repro` is a parent run per subject with its stage runs as children and their metrics and durations
(stages/common/pipeline_run.py), checked by running real DVC on a two-stage chain and reading the SQLite store back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")  # the console script, as a user types it

STAGE = """\
import sys, time
from pydantic import BaseModel
from stages.common.tracking import stage_run

class Config(BaseModel):
    steps: int = 3

stage, subject, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
with stage_run(stage, Config(), subject=subject) as tracker:
    tracker.log_metrics({"psnr": value - 1}, step=0)
    tracker.log_metrics({"psnr": value}, step=1)
    time.sleep(0.05)
    if value < 0:
        raise SystemExit(f"error: {stage} failed")
print(stage, subject)
"""

# A config set's pipeline file, run from the project root as pipelines/<set>/dvc.yaml is.
PIPELINE = """\
stages:
  preprocess:
    foreach: [fox, yoda]
    do:
      wdir: ../..
      cmd: python stage.py preprocess ${item} 1.5 > out/preprocess-${item}
      outs:
      - out/preprocess-${item}
  eval:
    foreach: [fox, yoda]
    do:
      wdir: ../..
      cmd: python stage.py eval ${item} SCORE > out/eval-${item}
      deps:
      - out/preprocess-${item}
      outs:
      - out/eval-${item}
"""


def make_project(root: Path, score: float = 21.9) -> Path:
    (root / "pipelines" / "demo").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "stage.py").write_text(STAGE)
    (root / "pipelines" / "demo" / "dvc.yaml").write_text(PIPELINE.replace("SCORE", str(score)))
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def environment(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOURD_", "DVC_"))}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO), DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def runs_of(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("fourd").experiment_id])


def families(runs: list) -> dict[str, tuple]:
    """{parent run id: (parent, {child run names})}."""
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("stage") == "pipeline"}
    return {
        pid: (p, {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == pid})
        for pid, p in parents.items()
    }


def test_a_plain_dvc_repro_is_a_parent_run_per_subject_with_its_stages_metrics(tmp_path):
    project = make_project(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [DVC, "repro", "pipelines/demo/dvc.yaml"], cwd=project, env=environment(uri), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tracking failed" not in proc.stderr, proc.stderr
    runs = runs_of(uri)
    assert len(runs) == 6  # two parents, four stage runs: every stage run has a parent
    by_name = {p.info.run_name: (p, children) for p, children in families(runs).values()}
    assert set(by_name) == {"demo/fox", "demo/yoda"}
    for subject, (parent, children) in by_name.items():
        subject = subject.split("/")[1]
        assert children == {f"preprocess/{subject}", f"eval/{subject}"}
        assert parent.info.status == "FINISHED"
        tags = parent.data.tags
        assert tags["config_set"] == "demo" and tags["subject"] == subject and "dvc" in tags["command"]
        assert tags["git_sha"] == next(r for r in runs if r.info.run_name == f"eval/{subject}").data.tags["git_sha"]
        metrics = parent.data.metrics
        assert metrics["preprocess/psnr"] == 1.5 and metrics["eval/psnr"] == 21.9  # each stage's latest value
        assert 0.05 <= metrics["eval/seconds"] < 60 and 0.05 <= metrics["preprocess/seconds"] < 60


def test_a_failed_stage_fails_its_dvc_repro_parent(tmp_path):
    project = make_project(tmp_path / "project", score=-1.0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    target = "pipelines/demo/dvc.yaml:eval@fox"
    proc = subprocess.run([DVC, "repro", target], cwd=project, env=environment(uri), capture_output=True, text=True)
    assert proc.returncode != 0
    ((parent, children),) = families(runs_of(uri)).values()
    assert parent.info.run_name == "demo/fox" and children == {"preprocess/fox", "eval/fox"}
    assert parent.info.status == "FAILED" and parent.data.metrics["eval/psnr"] == -1.0


def test_dvc_repros_running_at_once_get_a_parent_each(tmp_path):
    """Two `dvc repro` (here `python -m dvc`, as the flow calls DVC) that start together on a new store: every stage
    run lands under its own invocation's parent, and no parent is created twice."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    projects = [make_project(tmp_path / f"p{i}") for i in (0, 1)]
    cmd = [sys.executable, "-m", "dvc", "repro", "pipelines/demo/dvc.yaml:eval@fox"]
    procs = [subprocess.Popen(cmd, cwd=p, env=environment(uri), stderr=subprocess.PIPE, text=True) for p in projects]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not any("tracking failed" in e for e in errors), errors
    runs = runs_of(uri)
    assert len(runs) == 6
    fams = list(families(runs).values())
    assert len(fams) == 2 and all(children == {"preprocess/fox", "eval/fox"} for _, children in fams)


def test_under_a_wrapped_pipeline_run_dvc_repro_adds_no_parent_of_its_own(tmp_path):
    """`make demo` / `make repro` wrap `dvc repro` in flows.tracking's parent (FOURD_PARENT_RUN_ID): one parent."""
    project = make_project(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    wrapped = [sys.executable, "-m", "flows.tracking", "--name", "demo/fox", "--config-set", "demo", "--"]
    cmd = [*wrapped, DVC, "repro", "pipelines/demo/dvc.yaml:eval@fox"]
    proc = subprocess.run(cmd, cwd=project, env=environment(uri), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = runs_of(uri)
    ((parent, children),) = families(runs).values()
    assert len(runs) == 3 and children == {"preprocess/fox", "eval/fox"}
    assert parent.info.status == "FINISHED" and parent.data.metrics["eval/psnr"] == 21.9


def test_a_stage_run_by_hand_has_no_parent(tmp_path):
    project = make_project(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "stage.py", "preprocess", "fox", "1.5"]
    subprocess.run(cmd, cwd=project, env=environment(uri), check=True, capture_output=True)
    (run,) = runs_of(uri)
    assert run.info.run_name == "preprocess/fox" and "mlflow.parentRunId" not in run.data.tags
