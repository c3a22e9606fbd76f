from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.common.artifacts import MANIFEST_FILE, PreprocessManifest, staged_output_dir
from stages.common.errors import StageError
from stages.common.image_io import write_rgba


def make_manifest(files: list[str]) -> PreprocessManifest:
    return PreprocessManifest(
        subject="disc",
        files=files,
        config_sha256="0" * 64,
        code_version="test",
        num_frames=1,
        size_px=8,
        fps=8.0,
        source_fps=24.0,
        source_num_frames=3,
        source_indices=[0],
        source_size=(16, 8),
        crop_box=(0, 0, 8, 8),
        alpha_source="input",
        prompt=None,
    )


FRAME = "frames/rgba_00000.png"


def write_artifact(directory, files=("a.txt",), frame_px=8):
    """A preprocess artifact of one `frame_px`² frame (the manifest says 8 px) plus text files."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        (directory / f).write_text("x")
    write_rgba(directory / FRAME, np.zeros((frame_px, frame_px, 4), np.uint8))
    manifest = make_manifest([*files, FRAME])
    manifest.write(directory)
    return manifest


def test_manifest_round_trip(tmp_path):
    written = write_artifact(tmp_path / "art")
    assert PreprocessManifest.load(tmp_path / "art") == written
    assert not list((tmp_path / "art").glob(".manifest-*")), "temp file left behind"


def test_manifest_load_rejects_another_schema(tmp_path):
    write_artifact(tmp_path / "art")
    data = json.loads((tmp_path / "art" / MANIFEST_FILE).read_text())
    data["schema_id"] = "fourd.preprocess/v0"
    (tmp_path / "art" / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(StageError, match="schema_id is 'fourd.preprocess/v0'"):
        PreprocessManifest.load(tmp_path / "art")


def test_manifest_load_rejects_missing_listed_file(tmp_path):
    write_artifact(tmp_path / "art", files=("a.txt", "b.txt"))
    (tmp_path / "art" / "b.txt").unlink()
    with pytest.raises(StageError, match="missing.*b.txt"):
        PreprocessManifest.load(tmp_path / "art")


def test_manifest_load_rejects_absent_broken_or_invalid(tmp_path):
    with pytest.raises(StageError, match="not found"):
        PreprocessManifest.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="no manifest.json"):
        PreprocessManifest.load(tmp_path / "empty")
    (tmp_path / "empty" / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(StageError, match="not valid JSON"):
        PreprocessManifest.load(tmp_path / "empty")
    write_artifact(tmp_path / "art")
    data = json.loads((tmp_path / "art" / MANIFEST_FILE).read_text())
    del data["size_px"]
    data["surprise"] = 1
    (tmp_path / "art" / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(StageError, match="missing key 'size_px'.*unknown key 'surprise'"):
        PreprocessManifest.load(tmp_path / "art")


def test_manifest_write_refuses_unwritten_files(tmp_path):
    with pytest.raises(RuntimeError, match="not written"):
        make_manifest(["ghost.png"]).write(tmp_path)
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_staged_output_appears_only_on_success(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with staged_output_dir(out) as tmp:
            (tmp / "half.png").write_text("x")
            raise ValueError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "staging directory left behind"
    with staged_output_dir(out) as tmp:
        write_artifact(tmp)
    assert PreprocessManifest.load(out).subject == "disc"


def test_staged_output_failure_keeps_the_previous_result(tmp_path):
    out = tmp_path / "out"
    with staged_output_dir(out) as tmp:
        write_artifact(tmp, files=("old.txt",))
    with pytest.raises(RuntimeError):
        with staged_output_dir(out) as tmp:
            raise RuntimeError("fails")
    assert (out / "old.txt").exists() and PreprocessManifest.load(out).files == ["old.txt", FRAME]
    with staged_output_dir(out) as tmp:
        write_artifact(tmp, files=("new.txt",))
    assert sorted(p.name for p in out.iterdir()) == ["frames", MANIFEST_FILE, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_output_refuses_a_foreign_folder(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(StageError, match="refusing to replace"):
        with staged_output_dir(precious):
            pass
    assert (precious / "thesis.tex").read_text() == "do not delete"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StageError, match="not a directory"):
        with staged_output_dir(tmp_path / "file"):
            pass


def test_view_set_files_and_load_any_manifest(tmp_path):
    from stages.common.artifacts import MvgenManifest, ViewSet, load_any_manifest

    views = ViewSet(
        num_views=2,
        num_frames=3,
        size_px=8,
        frame_template="v{view:02d}/rgba_{frame:05d}.png",
        cameras_file="cameras.json",
        source_indices=[0, 4, 8],
    )
    files = views.file_list()
    assert len(files) == 7 and files[0] == "v00/rgba_00000.png" and files[-1] == "cameras.json"
    assert views.frame_path(tmp_path, 1, 2) == tmp_path / "v01/rgba_00002.png"
    for f in files[:-1]:
        write_rgba(tmp_path / f, np.zeros((8, 8, 4), np.uint8))
    (tmp_path / "cameras.json").write_text(json.dumps([{}, {}]))  # the check counts them
    MvgenManifest(
        subject="s", files=files, config_sha256="0", code_version="t", views=views, prompt=None, fps=8.0
    ).write(tmp_path)
    assert isinstance(load_any_manifest(tmp_path), MvgenManifest)
    write_artifact(tmp_path / "pre")
    assert isinstance(load_any_manifest(tmp_path / "pre"), PreprocessManifest)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / MANIFEST_FILE).write_text(json.dumps({"schema_id": "fourd.other/v9"}))
    with pytest.raises(StageError, match="unknown schema_id 'fourd.other/v9'"):
        load_any_manifest(tmp_path / "odd")
    (tmp_path / "cameras.json").write_text(json.dumps([{}, {}, {}]))
    with pytest.raises(StageError, match="3 cameras, but the manifest says the mvgen views has 2 views"):
        load_any_manifest(tmp_path)
    write_rgba(tmp_path / files[0], np.zeros((32, 32, 4), np.uint8))
    (tmp_path / "cameras.json").write_text(json.dumps([{}, {}]))
    with pytest.raises(StageError, match="rgba_00000.png: 32x32 px, but the manifest says the mvgen views are 8x8"):
        load_any_manifest(tmp_path)


def test_an_artifact_that_contradicts_its_manifest_is_refused_naming_the_first_mismatch(tmp_path):
    write_artifact(tmp_path / "big", frame_px=32)  # the manifest says 8 px
    with pytest.raises(StageError, match=r"rgba_00000.png: 32x32 px, but the manifest says the frames are 8x8"):
        PreprocessManifest.load(tmp_path / "big")
    write_artifact(tmp_path / "art")
    data = json.loads((tmp_path / "art" / MANIFEST_FILE).read_text())
    (tmp_path / "art" / MANIFEST_FILE).write_text(json.dumps({**data, "source_indices": [0, 1]}))
    with pytest.raises(StageError, match=r"2 source_indices for num_frames 1"):
        PreprocessManifest.load(tmp_path / "art")


def test_a_stage_without_git_records_the_commit_it_was_given(tmp_path):
    """A stage image has no git: `FOURD_CODE_VERSION` (its build arg) is the manifest's code_version."""
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env.update(PATH=str(tmp_path / "no-git-here"), FOURD_CODE_VERSION="0123abc", FOURD_TRACKING="off")
    env["PYTHONPATH"] = str(repo)
    cmd = [sys.executable, "-m", "stages.preprocess", "--config", "configs/tiny/preprocess.yaml"]
    cmd += ["--input", "examples/fox/render/input", "--output", str(tmp_path / "out"), "--subject", "fox"]
    proc = subprocess.run(cmd + ["--framing", "keep"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert PreprocessManifest.load(tmp_path / "out").code_version == "0123abc"
