"""Flows started at once on a fresh checkout: two on the same subject, and ones on different subjects (one of them
registering its video meanwhile), all finish, each stage instance runs once, and DVC agrees with what is on disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect")
pytest.importorskip("dvc")

from flows.fourd import fourd  # noqa: E402
from stages.common.artifacts import PreprocessManifest  # noqa: E402


def dvc_status(repo: Path, *targets: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", *targets], cwd=repo, env=env, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.decode()


def test_flows_at_once_on_the_same_and_on_different_subjects(tiny_repo, tmp_path, prefect_harness, monkeypatch):
    monkeypatch.setenv("FOURD_GPUS", "none")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    frames = tmp_path / "vixen"
    shutil.copytree(tiny_repo / "examples/fox/render/input", frames, ignore=shutil.ignore_patterns("prompt.txt"))
    common = {"config_set": "tiny", "stages": ["preprocess"], "repo": str(tiny_repo)}
    jobs = [{"subject": "fox"}, {"subject": "fox"}, {"video": str(frames), "fps": 8.0, "prompt": "a vixen walking"}]
    with ThreadPoolExecutor(len(jobs)) as pool:
        summaries = [f.result(timeout=300) for f in [pool.submit(fourd, **job, **common) for job in jobs]]

    assert [s["subject"] for s in summaries] == ["fox", "fox", "vixen"]
    fox_runs = [s["stages"]["preprocess"]["ran"] for s in summaries[:2]]
    assert sorted(fox_runs) == [False, True]  # one flow ran preprocess@fox, the other found it up to date
    lock = yaml.safe_load((tiny_repo / "pipelines/tiny/dvc.lock").read_text())["stages"]
    assert {"preprocess@fox", "preprocess@vixen"} <= set(lock)
    targets = [f"pipelines/tiny/dvc.yaml:preprocess@{s}" for s in ("fox", "vixen")]
    assert "up to date" in dvc_status(tiny_repo, *targets).lower()
    assert "up to date" in dvc_status(tiny_repo, "data/raw/vixen.dvc").lower()
    for subject in ("fox", "vixen"):
        out = tiny_repo / "data/tiny/preprocess"
        assert PreprocessManifest.load(out / subject).subject == subject
        assert not list(out.glob(f".{subject}.*"))  # no staging folder left
