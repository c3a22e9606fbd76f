"""The `fourd` flow end to end on the example subject (tiny configs, tiny 4DM weights), under Prefect's harness.

One module-scoped repository copy, and one module-scoped run of the flow that builds fox's chain in it (`chain`):
the tests that need the chain ask for it, and a test that changes the copy puts back what it changed, so the tests
hold in any order. Every config set runs in the repository itself, through its pipeline file
pipelines/<set>/dvc.yaml (flows/pipelines.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect")
pytest.importorskip("dvc")

from flows.fourd import fourd  # noqa: E402
from stages.common.artifacts import DistillManifest, EvalManifest, MvgenManifest, PreprocessManifest  # noqa: E402
from stages.common.config import load_config_data  # noqa: E402
from tests.conftest import isolate_tracking  # noqa: E402
from tests.flows.builders import copy_repository  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_harness")
CHAIN = ["preprocess@fox", "mvgen@fox", "distill@fox", "eval@fox"]


def dvc(ws: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def mlflow_runs(store: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(store.as_uri())
    return mlflow.search_runs(experiment_names=["fourd"], output_format="list")


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def ran(summary: dict) -> list[str]:
    return [s["instance"] for s in summary["stages"].values() if s["ran"]]


@dataclass(frozen=True)
class Chain:
    """The flow's first run on fox in `tiny_repo` with the tiny set: its summary and the MLflow store it logged to."""

    summary: dict
    store: Path


@pytest.fixture(scope="module")
def chain(tiny_repo: Path, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    with pytest.MonkeyPatch.context() as monkeypatch:
        store = isolate_tracking(tmp_path_factory.mktemp("chain-mlruns"), monkeypatch)
        return Chain(fourd(subject="fox", config_set="tiny", repo=str(tiny_repo)), store)


def test_flow_runs_the_chain_tracks_it_and_a_second_run_is_a_noop(tiny_repo, chain, mlflow_store):
    summary = chain.summary
    ws = tiny_repo / "data/tiny"
    assert summary["pipeline"] == "pipelines/tiny/dvc.yaml" and ran(summary) == CHAIN and summary["notice"] is None

    # Every artifact is valid and made with the tiny configs.
    pre = PreprocessManifest.load(ws / "preprocess/fox")
    assert (pre.subject, pre.size_px, pre.num_frames) == ("fox", 32, 4)
    mv = MvgenManifest.load(ws / "mvgen/fox")
    assert (mv.views.num_views, mv.views.num_frames, mv.views.size_px) == (4, 4, 32)
    di = DistillManifest.load(ws / "distill/fox")
    assert (di.renders.num_views, di.renders.num_frames) == (4, 4) and di.num_steps == 2
    ev = EvalManifest.load(ws / "eval/fox")
    assert ev.prediction_stage == "distill"
    assert {"psnr", "ssim"} <= set(ev.metrics) and summary["metrics"]["psnr"] == pytest.approx(ev.metrics["psnr"])
    assert yaml.safe_load((ws / "mvgen/fox/config.yaml").read_text()) == load_config_data(
        tiny_repo / "configs/tiny/mvgen.yaml"
    )  # the set's overlay merged onto configs/mvgen.yaml

    # DVC recorded every stage in the set's own lock file, nothing is stale, metrics are readable.
    lock = yaml.safe_load((tiny_repo / "pipelines/tiny/dvc.lock").read_text())["stages"]
    assert set(CHAIN) <= set(lock)
    assert "up to date" in dvc(tiny_repo, "status", *(f"pipelines/tiny/dvc.yaml:{i}" for i in CHAIN)).lower()
    assert "psnr" in json.dumps(json.loads(dvc(tiny_repo, "metrics", "show", "--json")))  # reports/tiny/fox.json

    # MLflow: one parent run for the flow, one child per stage with the stage's params/metrics.
    runs = mlflow_runs(chain.store)
    parent = next(r for r in runs if r.info.run_id == summary["mlflow_run_id"])
    assert parent.info.run_name == "fourd/fox" and parent.info.status == "FINISHED"
    assert parent.data.tags["config_set"] == "tiny" and parent.data.tags["subject"] == "fox"
    assert parent.data.metrics["psnr"] == pytest.approx(ev.metrics["psnr"])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"preprocess/fox", "mvgen/fox", "distill/fox", "eval/fox"}
    assert children["eval/fox"].data.metrics["psnr"] == pytest.approx(ev.metrics["psnr"])
    assert children["mvgen/fox"].data.params["num_inference_steps"] == "2"
    assert children["preprocess/fox"].data.tags["dvc_stage"] == "preprocess@fox"
    # Every run carries the project's own commit (no copy of the repository with a git of its own).
    assert {r.data.tags["git_sha"].removesuffix("-dirty") for r in [parent, *children.values()]} == {
        git_head(tiny_repo)
    }
    # The parent carries each stage's metrics and duration, so comparing parents compares the stages.
    assert parent.data.metrics["eval/psnr"] == pytest.approx(ev.metrics["psnr"])
    assert {f"{s}/seconds" for s in ("preprocess", "mvgen", "distill", "eval")} <= set(parent.data.metrics)
    # What a person wants to look at is logged: mvgen's grid and preview, distill's orbit, eval's report and grid.
    from mlflow import MlflowClient

    client = MlflowClient(chain.store.as_uri())
    logged = {n: {a.path for a in client.list_artifacts(r.info.run_id)} for n, r in children.items()}
    assert {"grid.png", "preview.mp4"} <= logged["mvgen/fox"] and "preview.mp4" in logged["distill/fox"]
    assert {"report.html", "grid.png"} <= logged["eval/fox"]
    assert "dvc.lock" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # A second run changes nothing: every stage is up to date, no stage run is opened, the lock is unchanged.
    before = (tiny_repo / "pipelines/tiny/dvc.lock").read_text()
    again = fourd(subject="fox", config_set="tiny", repo=str(tiny_repo))
    assert ran(again) == [] and (tiny_repo / "pipelines/tiny/dvc.lock").read_text() == before
    runs = mlflow_runs(mlflow_store)
    assert not [r for r in runs if r.data.tags.get("mlflow.parentRunId") == again["mlflow_run_id"]]
    # The production pipeline was not touched: the tiny set has its own outputs and lock file.
    assert not (tiny_repo / "dvc.lock").exists() and not (tiny_repo / "data/preprocess/fox").exists()
    assert not (tiny_repo / "out").exists()


def test_config_change_reruns_only_the_affected_stages(tiny_repo, chain):
    cfg_path = tiny_repo / "configs/tiny/eval.yaml"
    lock_path, metrics_path = tiny_repo / "pipelines/tiny/dvc.lock", tiny_repo / "reports/tiny/fox.json"
    kept = {path: path.read_text() for path in (cfg_path, lock_path, metrics_path)}
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["image_size_px"] = 24
        cfg_path.write_text(yaml.safe_dump(cfg))
        summary = fourd(subject="fox", config_set="tiny", repo=str(tiny_repo))
        assert ran(summary) == ["eval@fox"]
        assert yaml.safe_load((tiny_repo / "data/tiny/eval/fox/config.yaml").read_text())["image_size_px"] == 24
        assert "image_size_px" in dvc(tiny_repo, "params", "diff")  # against the commit
        assert "up to date" in dvc(tiny_repo, "status", *(f"pipelines/tiny/dvc.yaml:{i}" for i in CHAIN)).lower()
    finally:  # the chain as `chain` built it: config, lock and metrics back, eval's output from DVC's cache
        for path, text in kept.items():
            path.write_text(text)
        dvc(tiny_repo, "checkout", "--force", "pipelines/tiny/dvc.yaml:eval@fox")
    assert EvalManifest.load(tiny_repo / "data/tiny/eval/fox").metrics == pytest.approx(chain.summary["metrics"])


def test_without_official_weights_the_flow_runs_the_demo_model_and_says_so(tmp_path, mlflow_store):
    """A fresh clone (no weights/fourdm, no weights/eval): `auto` falls back to the shipped demo model, loudly."""
    from flows.workspace import WorkspaceError

    repo = copy_repository(tmp_path / "repo")
    summary = fourd(subject="fox", stages=["preprocess"], repo=str(repo))
    assert summary["config_set"] == "demo" and summary["pipeline"] == "pipelines/demo/dvc.yaml"
    assert "weights/fourdm" in summary["notice"] and "a low-poly red fox" in summary["notice"]
    assert "a cartoon robot" in summary["notice"]  # names every subject the demo model knows
    assert PreprocessManifest.load(repo / "data/demo/preprocess/fox").size_px == 64  # configs/demo/preprocess.yaml
    (parent,) = [r for r in mlflow_runs(mlflow_store) if r.info.run_id == summary["mlflow_run_id"]]
    assert parent.data.tags["config_set"] == "demo" and parent.data.tags["config_set_requested"] == "auto"
    # Asked for the production configs explicitly, the flow fails, naming what is missing on the first line.
    with pytest.raises(WorkspaceError) as err:
        fourd(subject="fox", config_set="default", repo=str(repo))
    first = str(err.value).splitlines()[0]
    assert "missing dependencies" in first and "weights/fourdm" in first and "config_set=demo" in first
    # `make prefect-run` prints the failed run's state message, which starts with the same reason.
    from flows.cli import last_failure

    assert first in last_failure()


def test_two_deployment_runs_submitted_at_once_both_finish(tiny_repo, tmp_path):
    """Two videos registered and processed by one served deployment at the same time (DVC access serialised)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    videos = []
    for name in ("alpha", "beta"):
        d = tmp_path / name
        d.mkdir()
        videos.append(d / f"{name}.mp4")
        videos[-1].write_bytes((tiny_repo / "examples/fox/video.mp4").read_bytes())
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "flows", "--serve"], cwd=tiny_repo, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        runs = None
        while runs is None:
            try:
                runs = [
                    run_deployment(
                        "fourd/serve",
                        parameters={
                            "video": str(v),
                            "prompt": f"a {v.stem} fox",
                            "config_set": "tiny",
                            "stages": ["preprocess"],
                            "repo": str(tiny_repo),
                        },
                        timeout=0,
                    )
                    for v in videos
                ]
            except Exception:  # the deployment is registered once the serve process is up
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        states = {}
        with get_client(sync_client=True) as client:
            while len(states) < 2 and time.monotonic() < deadline + 120:
                for r in runs:
                    state = client.read_flow_run(r.id).state
                    if state.is_final():
                        states[r.id] = state
                time.sleep(1)
        assert len(states) == 2 and all(s.is_completed() for s in states.values()), states
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    ws = tiny_repo / "data/tiny"
    lock = yaml.safe_load((tiny_repo / "pipelines/tiny/dvc.lock").read_text())["stages"]
    for name in ("alpha", "beta"):
        assert params["subjects"][name]["input"] == f"data/raw/{name}/video.mp4"
        assert (tiny_repo / f"data/raw/{name}.dvc").is_file()
        assert (tiny_repo / f"data/raw/{name}/prompt.txt").read_text().strip() == f"a {name} fox"
        m = PreprocessManifest.load(ws / f"preprocess/{name}")
        assert m.subject == name and m.prompt == f"a {name} fox"
        assert f"preprocess@{name}" in lock
    assert "# DVC vars" in (tiny_repo / "params.yaml").read_text()  # comments survive registration
