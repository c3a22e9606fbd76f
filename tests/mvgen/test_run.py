from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.common.artifacts import MvgenManifest, PreprocessManifest
from stages.common.cameras import load_cameras, orbit_c2w
from stages.common.cli import cli_main
from stages.common.config import load_config
from stages.common.image_io import composite_on_white, read_rgba
from stages.mvgen import MvgenConfig, run
from stages.preprocess import PreprocessConfig
from stages.preprocess import run as preprocess
from tests.mvgen.tiny import IMAGE_PX, tiny_pipeline
from tests.synthetic import disc_frames, write_video

REPO = Path(__file__).resolve().parents[2]
TINY = load_config(MvgenConfig, REPO / "configs/tiny/mvgen.yaml")


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mvgen")
    tiny_pipeline(root).save_pretrained(root / "weights")
    frames, _ = disc_frames(12, 80, 60, radius=9)
    write_video(root / "disc.mp4", frames, fps=12)
    (root / "disc.txt").write_text("an orange disc")
    cfg = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml").model_copy(update={"size_px": IMAGE_PX})
    preprocess(cfg, input_path=root / "disc.mp4", output_dir=root / "pre")
    return {"weights": root / "weights", "pre": root / "pre"}


def test_stage_writes_views_cameras_and_previews(subject, tmp_path):
    m = run(TINY, input_dir=subject["pre"], weights_dir=subject["weights"], output_dir=tmp_path / "out")
    assert MvgenManifest.load(tmp_path / "out") == m
    pre = PreprocessManifest.load(subject["pre"])
    assert (m.views.num_views, m.views.num_frames, m.views.size_px) == (4, pre.num_frames, IMAGE_PX)
    assert m.views.source_indices == pre.source_indices and m.prompt == "an orange disc"
    assert set(m.upstream) == {"preprocess"}
    cams = load_cameras(tmp_path / "out" / m.views.cameras_file)
    assert [c.azimuth_deg for c in cams] == [0.0, 90.0, 180.0, 270.0]
    for c in cams:
        np.testing.assert_allclose(c.c2w_array(), orbit_c2w(c.azimuth_deg, 0.0, 1.1))
    for v in range(4):
        for f in range(m.views.num_frames):
            rgba = read_rgba(m.views.frame_path(tmp_path / "out", v, f))
            assert rgba.shape == (IMAGE_PX, IMAGE_PX, 4)
    grid = read_rgba(tmp_path / "out" / "grid.png")
    assert grid.shape == (4 * IMAGE_PX, pre.num_frames * IMAGE_PX, 4)
    np.testing.assert_array_equal(
        grid[:IMAGE_PX, :IMAGE_PX, :3], composite_on_white(read_rgba(m.views.frame_path(tmp_path / "out", 0, 0)))
    )


def test_wrong_resolution_is_a_clear_error(subject, tmp_path):
    frames, _ = disc_frames(12, 80, 60, radius=9)
    write_video(tmp_path / "d.mp4", frames, fps=12)
    cfg = load_config(PreprocessConfig, REPO / "configs/tiny/preprocess.yaml")  # 32 px, the model wants 16
    preprocess(cfg, input_path=tmp_path / "d.mp4", output_dir=tmp_path / "pre32")
    from stages.common.errors import StageError

    with pytest.raises(StageError, match="works at 16 px"):
        run(TINY, input_dir=tmp_path / "pre32", weights_dir=subject["weights"], output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["weights", "input"])
def test_cli_missing_weights_or_input_is_one_line(bad, subject, tmp_path, capsys):
    args = {"--input": str(subject["pre"]), "--weights": str(subject["weights"])}
    args["--" + bad] = str(tmp_path / "absent")
    rc = cli_main(
        run,
        MvgenConfig,
        [*sum(args.items(), ()), "--output", str(tmp_path / "out"), "--config", str(REPO / "configs/tiny/mvgen.yaml")],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: ") and "absent" in err[-1]
    assert not (tmp_path / "out").exists()


def test_each_azimuth_offset_adds_a_set_of_four_views_sampled_as_its_own_run(subject, tmp_path):
    both = TINY.model_copy(update={"azimuth_offsets_deg": (0.0, 45.0)})
    m = run(both, input_dir=subject["pre"], weights_dir=subject["weights"], output_dir=tmp_path / "both")
    assert m.views.num_views == 8
    cams = load_cameras(tmp_path / "both" / m.views.cameras_file)
    assert [c.azimuth_deg for c in cams] == [0.0, 90.0, 180.0, 270.0, 45.0, 135.0, 225.0, 315.0]
    assert [c.view for c in cams] == list(range(8))
    for c in cams:
        np.testing.assert_allclose(c.c2w_array(), orbit_c2w(c.azimuth_deg, 0.0, 1.1))
    # Set k is exactly what a run with that one offset writes: the paper's views first, then the turned set.
    for offset, first in ((0.0, 0), (45.0, 4)):
        single = TINY.model_copy(update={"azimuth_offsets_deg": (offset,)})
        s = run(single, input_dir=subject["pre"], weights_dir=subject["weights"], output_dir=tmp_path / f"o{offset:g}")
        for v in range(4):
            for f in range(m.views.num_frames):
                np.testing.assert_array_equal(
                    read_rgba(m.views.frame_path(tmp_path / "both", first + v, f)),
                    read_rgba(s.views.frame_path(tmp_path / f"o{offset:g}", v, f)),
                )
    assert read_rgba(tmp_path / "both" / "grid.png").shape[0] == 8 * IMAGE_PX


@pytest.mark.parametrize("offsets", [(0.0, 90.0), (45.0, -45.0), ()])
def test_azimuth_offsets_that_repeat_a_camera_or_are_empty_are_refused(offsets):
    with pytest.raises(ValueError, match="azimuth_offsets_deg|repeat a camera"):
        MvgenConfig.model_validate({**TINY.model_dump(), "azimuth_offsets_deg": offsets})
