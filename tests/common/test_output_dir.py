"""Output replacement: staging folders of killed runs go away, inputs inside the output are refused, and the
output never disappears while it is replaced."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np

from stages.common.artifacts import staged_output_dir
from stages.common.cli import cli_main
from stages.common.image_io import write_rgba
from stages.preprocess import PreprocessConfig
from stages.preprocess import run as preprocess
from tests.synthetic import disc_frames

REPO = Path(__file__).resolve().parents[2]


def finished(directory: Path, text: str) -> None:
    (directory / "manifest.json").write_text(text)


def test_staging_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / ".out.staging-deadbeef"
    (dead / "frames").mkdir(parents=True)
    (dead / "frames" / "half.png").write_bytes(b"half written")
    live = tmp_path / ".out.staging-0badcafe"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run is writing this one right now
    try:
        with staged_output_dir(out) as staging:
            finished(staging, "{}")
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.staging-0badcafe", "out"]
    finally:
        os.close(fd)
    with staged_output_dir(out) as staging:  # its writer is gone now
        finished(staging, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_output_exists_at_every_moment_of_its_replacement(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with staged_output_dir(out) as staging:
        finished(staging, "old")
    seen: list[bool] = []
    for name in ("rename", "replace"):
        original = getattr(os, name)

        def watched(src, dst, _original=original):
            _original(src, dst)
            seen.append((out / "manifest.json").is_file())

        monkeypatch.setattr(os, name, watched)
    with staged_output_dir(out) as staging:
        finished(staging, "new")
    assert (out / "manifest.json").read_text() == "new" and all(seen), seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_input_inside_the_output_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "subject"
    frames, _ = disc_frames(8, 40, 30, radius=5, rgba=True)
    for i, frame in enumerate(frames):
        write_rgba(out / "frames" / f"rgba_{i:05d}.png", frame)
    finished(out, "{}")  # looks like a previous result, so the output check alone would replace it
    before = {p.name: p.read_bytes() for p in (out / "frames").iterdir()}
    config = str(REPO / "configs/tiny/preprocess.yaml")
    argv = ["--config", config, "--input", str(out / "frames"), "--output", str(out), "--folder-fps", "8"]
    assert cli_main(preprocess, PreprocessConfig, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --output") and "overlap" in err[-1]
    assert {p.name: p.read_bytes() for p in (out / "frames").iterdir()} == before
    argv = ["--config", config, "--input", str(out / "frames"), "--output", str(out / "frames" / "x")]
    assert cli_main(preprocess, PreprocessConfig, [*argv, "--folder-fps", "8"]) == 1
    assert not (out / "frames" / "x").exists() and np.all(
        [p.name.endswith(".png") for p in (out / "frames").iterdir()]
    )
