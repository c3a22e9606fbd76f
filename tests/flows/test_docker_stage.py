"""Opt-in (RUN_DOCKER_TESTS=1, marker `docker`): build the preprocess image offline and run its stage through the flow.

The offline way of platform-notes §4: a Docker engine started by hand without bridge/iptables (if none runs and
we are root), a base image made with debootstrap + `docker import` (no registry), wheels from a local folder
(`FOURD_DOCKER_WHEELS`, else `pip download` into a temporary one). Then `fourd(executor="docker")` runs
preprocess@fox in the image and `dvc commit`s it. Takes minutes; never part of `make test`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.flows.builders import REPO, copy_repository

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]
BASE = os.environ.get("FOURD_DOCKER_BASE", "local/debian-py:bookworm")
TAG = "fourd/preprocess:offline-test"


def sh(*args: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def engine_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory):
    if engine_up():
        yield
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("no Docker engine, and cannot start one (apt-get install docker.io; run as root)")
    root = Path(os.environ.get("FOURD_DOCKER_ROOT", "/var/tmp/fourd-docker"))
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "exec").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "dockerd",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "-H",
            "unix:///var/run/docker.sock",
        ],
        stdout=open(root / "dockerd.log", "a"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(60):
        if engine_up():
            break
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"dockerd did not start: {(root / 'dockerd.log').read_text()[-2000:]}")
    yield
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    subprocess.run(["umount", str(root / "exec" / "netns" / "default")], capture_output=True)


@pytest.fixture(scope="module")
def base_image(docker_engine, tmp_path_factory):
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode == 0:
        return BASE
    if shutil.which("debootstrap") is None:
        pytest.skip(f"no base image {BASE} and no debootstrap to make one")
    rootfs = tmp_path_factory.mktemp("rootfs")
    sh(
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates",
        "bookworm",
        str(rootfs),
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    sh("docker", "import", "-", BASE, stdin=tar.stdout)
    return BASE


@pytest.fixture(scope="module")
def preprocess_image(base_image, tmp_path_factory):
    ctx = tmp_path_factory.mktemp("context")
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / rel, ctx / rel)
    for rel in ("stages", "flows"):
        shutil.copytree(REPO / rel, ctx / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "docker", ctx / "docker", ignore=shutil.ignore_patterns("wheels"))
    wheels = ctx / "docker" / "wheels"
    src = os.environ.get("FOURD_DOCKER_WHEELS")
    if src:
        shutil.copytree(src, wheels, copy_function=os.link)
    else:
        sh(
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "-d",
            str(wheels),
            "--only-binary=:all:",
            "torch==2.13.0",
            "setuptools>=69",
            "wheel",
            "async-timeout",
            f"{ctx}[rembg]",
        )
    sh(
        "docker",
        "build",
        "--network",
        "none",
        "-f",
        "docker/Dockerfile.preprocess",
        "--build-arg",
        f"PYTHON_IMAGE={base_image}",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "-t",
        TAG,
        ".",
        cwd=ctx,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return TAG


def test_preprocess_image_runs_the_stage_through_the_flow(preprocess_image, prefect_harness, tmp_path, mlflow_store):
    from flows.fourd import fourd
    from stages.common.artifacts import PreprocessManifest

    help_out = sh("docker", "run", "--rm", "--network", "none", preprocess_image, "--help").stdout
    assert "python -m stages.preprocess" in help_out
    user = sh("docker", "image", "inspect", "-f", "{{.Config.User}}", preprocess_image).stdout.strip()
    assert user not in ("", "root", "0")

    repo = copy_repository(tmp_path / "repo")
    summary = fourd(
        subject="fox",
        config_set="tiny",
        stages=["preprocess"],
        executor="docker",
        images={"preprocess": preprocess_image},
        repo=str(repo),
    )
    assert summary["stages"]["preprocess"]["ran"]
    m = PreprocessManifest.load(repo / "data/tiny/preprocess/fox")
    assert (m.subject, m.size_px, m.num_frames) == ("fox", 32, 4)
    assert "preprocess@fox" in yaml.safe_load((repo / "pipelines/tiny/dvc.lock").read_text())["stages"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    target = "pipelines/tiny/dvc.yaml:preprocess@fox"
    status = sh(sys.executable, "-m", "dvc", "status", target, cwd=repo, env=env).stdout
    assert "up to date" in status.lower()
    import mlflow

    mlflow.set_tracking_uri(mlflow_store.as_uri())
    runs = mlflow.search_runs(experiment_names=["fourd"], output_format="list")
    child = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]]
    assert [r.info.run_name for r in child] == ["preprocess/fox"]
