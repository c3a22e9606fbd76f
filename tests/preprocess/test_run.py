from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages.common.artifacts import PreprocessManifest
from stages.common.cli import cli_main
from stages.common.config import load_config
from stages.common.image_io import read_rgba
from stages.preprocess import PreprocessConfig, run
from stages.preprocess.recenter import square_crop_box, union_box
from tests.synthetic import FOREGROUND, disc_frames, write_video

REPO = Path(__file__).resolve().parents[2]
TINY = PreprocessConfig(size_px=32, matting={"work_size_px": 96})


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def disc_video(tmp_path) -> Path:
    frames, _ = disc_frames(25, 96, 64, radius=10)
    return write_video(tmp_path / "disc.mp4", frames, fps=24)


def test_run_writes_a_valid_artifact(tmp_path, disc_video):
    (tmp_path / "disc.txt").write_text("an orange disc\n")
    manifest = run(TINY, input_path=disc_video, output_dir=tmp_path / "out")
    again = PreprocessManifest.load(tmp_path / "out")
    assert again == manifest
    assert manifest.subject == "disc" and manifest.prompt == "an orange disc"
    assert manifest.source_indices == [0, 3, 6, 9, 12, 15, 18, 21]
    assert manifest.source_num_frames == 25 and manifest.num_frames == 8
    assert manifest.fps == pytest.approx(8.0) and manifest.source_fps == pytest.approx(24.0)
    assert manifest.alpha_source == "border" and manifest.source_size == (96, 64)
    for path in manifest.frame_paths(tmp_path / "out"):
        rgba = read_rgba(path)
        assert rgba.shape == (32, 32, 4)
        assert rgba[..., 3].max() == 255 and rgba[0, :, 3].max() == 0  # object present, margin empty
    assert load_config(PreprocessConfig, tmp_path / "out" / "config.yaml") == TINY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disc.mp4", "disc.txt", "out"]


def test_same_seed_gives_byte_identical_outputs(tmp_path, disc_video):
    run(TINY, input_path=disc_video, output_dir=tmp_path / "a")
    run(TINY, input_path=disc_video, output_dir=tmp_path / "b")
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")


def test_input_alpha_is_honoured(tmp_path):
    frames, alphas = disc_frames(8, 64, 48, radius=9, rgba=True)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame_{i:03d}.png")
    # No margin and an output as large as the crop: no resampling, so the alpha must come through exactly.
    side = square_crop_box(union_box(alphas, 0.5), 0.0)
    size = side[2] - side[0]
    manifest = run(
        TINY.model_copy(update={"size_px": size, "margin_frac": 0.0}),
        input_path=folder,
        output_dir=tmp_path / "out",
        subject="disc",
    )
    assert manifest.alpha_source == "input"
    x0, y0, x1, y1 = manifest.crop_box
    assert x1 - x0 == size
    for i, path in enumerate(manifest.frame_paths(tmp_path / "out")):
        out = read_rgba(path)
        padded = np.pad(alphas[i], size)
        expected = padded[y0 + size : y1 + size, x0 + size : x1 + size]
        np.testing.assert_array_equal(out[..., 3], (expected * 255).astype(np.uint8))
        np.testing.assert_array_equal(
            out[out[..., 3] == 255][:, :3], np.broadcast_to(FOREGROUND, (int((out[..., 3] == 255).sum()), 3))
        )
    # Asked to ignore it, the stage mattes instead.
    m2 = run(TINY.model_copy(update={"use_input_alpha": False}), input_path=folder, output_dir=tmp_path / "o2")
    assert m2.alpha_source == "border"


def test_opaque_alpha_counts_as_no_alpha(tmp_path):
    frames, _ = disc_frames(8, 64, 48)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(np.dstack([f, np.full(f.shape[:2], 255, np.uint8)])).save(folder / f"{i}.png")
    assert run(TINY, input_path=folder, output_dir=tmp_path / "out").alpha_source == "border"


def test_prompt_from_config_wins_and_folder_prompt_file(tmp_path, disc_video):
    (tmp_path / "prompt.txt").write_text("from file")
    m = run(TINY.model_copy(update={"prompt": "from config"}), input_path=disc_video, output_dir=tmp_path / "o1")
    assert m.prompt == "from config"
    assert run(TINY, input_path=disc_video, output_dir=tmp_path / "o2").prompt == "from file"


def test_stride_selection_and_subject_override(tmp_path, disc_video):
    cfg = TINY.model_copy(update={"num_frames": 4, "frame_selection": "stride", "stride": 5, "start_frame": 2})
    m = run(cfg, input_path=disc_video, output_dir=tmp_path / "out", subject="my_disc")
    assert m.source_indices == [2, 7, 12, 17] and m.subject == "my_disc"
    assert m.fps == pytest.approx(24 / 5)


# ---------------------------------------------------------------------------------------------------------
# Bad input: one clear error line, exit status 1, nothing written.


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    rc = cli_main(run, PreprocessConfig, args)
    return rc, capsys.readouterr().err.strip().splitlines()


def make_bad_input(kind: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """Return (input path, extra CLI args) for one kind of bad input."""
    frames, _ = disc_frames(25, 96, 64, radius=10)
    match kind:
        case "missing":
            return tmp_path / "nope.mp4", []
        case "not_a_video":
            (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
            return tmp_path / "notes.mp4", []
        case "unsupported_type":
            (tmp_path / "notes.txt").write_text("hello")
            return tmp_path / "notes.txt", []
        case "truncated":
            path = write_video(tmp_path / "t.mp4", frames, fps=24)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            return path, []
        case "corrupt":
            path = write_video(tmp_path / "c.mp4", frames, fps=24)
            data = bytearray(path.read_bytes())
            data[: len(data)] = bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8))
            path.write_bytes(bytes(data))
            return path, []
        case "zero_frames_video":
            path = tmp_path / "empty.mp4"
            path.write_bytes(b"")
            return path, []
        case "zero_frames_folder":
            (tmp_path / "frames").mkdir()
            (tmp_path / "frames" / "prompt.txt").write_text("x")
            return tmp_path / "frames", []
        case "too_few_frames":
            return write_video(tmp_path / "short.mp4", frames[:5], fps=24), []
        case "empty_foreground":
            flat = [np.full((64, 96, 3), 128, np.uint8) for _ in range(10)]
            return write_video(tmp_path / "flat.mp4", flat, fps=24), []
        case "unknown_config_key":
            cfg = tmp_path / "c.yaml"
            cfg.write_text(yaml.safe_dump({"num_frame": 8}))
            return write_video(tmp_path / "ok.mp4", frames, fps=24), ["--config", str(cfg)]
        case "wrong_type":
            cfg = tmp_path / "c.yaml"
            cfg.write_text(yaml.safe_dump({"size_px": "large"}))
            return write_video(tmp_path / "ok.mp4", frames, fps=24), ["--config", str(cfg)]
        case "rembg_model_missing":
            return (
                write_video(tmp_path / "ok.mp4", frames, fps=24),
                ["--matting.backend", "rembg", "--weights", str(tmp_path / "w")],
            )
    raise AssertionError(kind)


BAD_INPUTS = {
    "missing": "input not found",
    "not_a_video": "not a readable video",
    "unsupported_type": "unsupported input",
    "truncated": "truncated|corrupt|not a readable video",
    "corrupt": "not a readable video|corrupt",
    "zero_frames_video": "not a readable video.*empty",
    "zero_frames_folder": "zero frames",
    "too_few_frames": "5 frames, fewer than the 8",
    "empty_foreground": "empty foreground mask",
    "unknown_config_key": "unknown key 'num_frame'",
    "wrong_type": "'size_px'",
    "rembg_model_missing": "u2net.onnx",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_writes_nothing(kind, tmp_path, capsys):
    source, extra = make_bad_input(kind, tmp_path)
    out = tmp_path / "out"
    rc, err = cli(["--input", str(source), "--output", str(out), *extra], capsys)
    assert rc == 1
    assert len(err) >= 1 and err[-1].startswith("error: ")
    assert sum(line.startswith("error:") for line in err) == 1
    import re

    assert re.search(BAD_INPUTS[kind], err[-1]), err[-1]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "staging left behind"


def test_truncated_video_with_index_up_front_is_caught(tmp_path):
    """An mp4 whose index is at the front (faststart) opens fine but loses its tail: the count must not lie."""
    from stages.common.errors import StageError
    from stages.preprocess.video_io import probe_source

    frames, _ = disc_frames(25, 96, 64, radius=10)
    path = tmp_path / "fs.mp4"
    import av

    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for f in frames:
            for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(p)
        for p in stream.encode(None):
            container.mux(p)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(StageError, match="truncated|corrupt"):
        probe_source(path)


def test_failed_rerun_keeps_the_previous_result(tmp_path, disc_video, capsys):
    out = tmp_path / "out"
    run(TINY, input_path=disc_video, output_dir=out)
    before = tree_hashes(out)
    rc, _ = cli(["--input", str(tmp_path / "absent.mp4"), "--output", str(out)], capsys)
    assert rc == 1 and tree_hashes(out) == before


def test_module_cli_on_the_bundled_example(tmp_path):
    """`python -m stages.preprocess` on the real example video (rendered from Fox.glb)."""
    out = tmp_path / "fox"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.preprocess",
            "--config",
            "configs/preprocess.yaml",
            "--input",
            "examples/fox/video.mp4",
            "--output",
            str(out),
            "--subject",
            "fox",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "FOURD_TRACKING": "off"},
    )
    assert proc.returncode == 0, proc.stderr
    m = PreprocessManifest.load(out)
    assert m.num_frames == 8 and m.size_px == 256 and m.alpha_source == "border"
    for path in m.frame_paths(out):
        alpha = read_rgba(path)[..., 3]
        assert 0.05 < (alpha > 127).mean() < 0.5  # a fox, not nothing and not the whole frame
        assert alpha[:, :12].max() == 0 and alpha[:, -12:].max() == 0  # centred with its margin


def test_keep_framing_pads_to_a_square_around_the_image_centre(tmp_path):
    frames, alphas = disc_frames(8, 64, 48, radius=6, rgba=True)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i}.png")
    m = run(TINY.model_copy(update={"framing": "keep", "size_px": 64}), input_path=folder, output_dir=tmp_path / "o")
    assert m.crop_box == (0, -8, 64, 56)  # 64×48 frame padded to 64×64, centred
    for i, path in enumerate(m.frame_paths(tmp_path / "o")):
        np.testing.assert_array_equal(read_rgba(path)[8:56, :, 3], (alphas[i] * 255).astype(np.uint8))
