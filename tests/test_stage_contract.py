"""The stage contract, for every implemented stage: a tiny run gives a manifest that validates, whose files
exist, whose config.yaml round-trips, and a second run with the same seed gives byte-identical files."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from stages.common.artifacts import CONFIG_FILE, MANIFEST_FILE, Manifest
from stages.common.config import StageConfig, config_sha256, load_config
from tests.synthetic import disc_frames, write_video

REPO = Path(__file__).resolve().parents[1]


def run_preprocess(tmp: Path, output_dir: Path) -> tuple[Manifest, type[Manifest], StageConfig]:
    from stages.common.artifacts import PreprocessManifest
    from stages.preprocess import PreprocessConfig, run

    video = tmp / "tiny.mp4"
    if not video.exists():
        frames, _ = disc_frames(12, 80, 60, radius=9)
        write_video(video, frames, fps=12)
    config = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml")
    return run(config, input_path=video, output_dir=output_dir, subject="tiny"), PreprocessManifest, config


TinyRun = Callable[[Path, Path], tuple[Manifest, type[Manifest], StageConfig]]
TINY_RUNS: dict[str, TinyRun] = {"preprocess": run_preprocess}


def hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("stage", sorted(TINY_RUNS))
def test_stage_contract(stage, tmp_path):
    manifest, cls, config = TINY_RUNS[stage](tmp_path, tmp_path / "a")
    loaded = cls.load(tmp_path / "a")
    assert loaded == manifest and loaded.stage == stage and loaded.schema_id.startswith(f"fourd.{stage}/v")
    listed = set(loaded.files) | {MANIFEST_FILE}
    assert listed == set(hashes(tmp_path / "a")), "every file is listed, and nothing else is there"
    assert CONFIG_FILE in loaded.files
    assert load_config(type(config), tmp_path / "a" / CONFIG_FILE) == config
    assert loaded.config_sha256 == config_sha256(config)
    TINY_RUNS[stage](tmp_path, tmp_path / "b")
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")


def test_every_implemented_stage_has_a_contract_test():
    from tests.test_repo_consistency import IMPLEMENTED

    assert set(IMPLEMENTED) == set(TINY_RUNS)
