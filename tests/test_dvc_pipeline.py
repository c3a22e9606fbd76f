"""`dvc repro` on a copy of the repository builds the example subject, and a config change reruns its stage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common.artifacts import PreprocessManifest

pytest.importorskip("dvc")
REPO = Path(__file__).resolve().parents[1]


def sh(args: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "FOURD_TRACKING": "off",
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    dst = tmp_path / "repo"
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    sh(["git", "init", "-q"], dst)
    sh(["git", "add", "-A"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dst)
    return dst


def test_dvc_repro_builds_the_example_and_reruns_on_config_change(repo_copy):
    dvc = [sys.executable, "-m", "dvc"]
    # The production pipeline's first stage for every subject (mvgen waits for weights/fourdm, render for assets;
    # make demo runs pipelines/demo/dvc.yaml instead).
    sh([*dvc, "repro", "--glob", "preprocess@*"], repo_copy)
    m = PreprocessManifest.load(repo_copy / "data/preprocess/fox")
    assert m.subject == "fox" and m.size_px == 256 and m.num_frames == 8
    assert m.alpha_source == "input" and m.fps == pytest.approx(8.0 / 3)  # 8 of 24 frames at 8 fps: stride 3
    assert m.crop_box == (0, 0, 256, 256)  # framing: keep (params.yaml): the render's own framing, as the GT's
    assert "up to date" in sh([*dvc, "status", "preprocess@fox"], repo_copy).lower()

    cfg_path = repo_copy / "configs/preprocess.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["size_px"] = 64
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert "preprocess@fox" in sh([*dvc, "status", "preprocess@fox"], repo_copy)
    assert "Running stage 'preprocess@fox'" in sh([*dvc, "repro", "preprocess@fox"], repo_copy)
    assert PreprocessManifest.load(repo_copy / "data/preprocess/fox").size_px == 64
    params = sh([*dvc, "params", "diff", "--md"], repo_copy)
    assert "size_px" in params and "64" in params
