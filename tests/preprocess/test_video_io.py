from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.common.errors import StageError
from stages.common.image_io import write_rgba
from stages.preprocess.video_io import probe_source, read_frames, select_indices
from tests.synthetic import disc_frames, write_video


def test_paper_selection_matches_the_official_formula():
    assert select_indices(25, 8, "paper") == [0, 3, 6, 9, 12, 15, 18, 21]
    for t in (8, 9, 17, 25, 40, 101):
        assert select_indices(t, 8, "paper") == [int(t / 8 * i) for i in range(8)]


def test_even_and_stride_selection():
    assert select_indices(25, 5, "even") == [0, 6, 12, 18, 24]
    assert select_indices(10, 1, "even") == [0]
    assert select_indices(40, 8, "stride", stride=4, start=2) == [2, 6, 10, 14, 18, 22, 26, 30]


def test_selection_with_too_few_frames():
    with pytest.raises(StageError, match="7 frames, fewer than the 8"):
        select_indices(7, 8, "paper")
    with pytest.raises(StageError, match="need 30"):
        select_indices(29, 8, "stride", stride=4, start=1)


@pytest.mark.parametrize(
    ("suffix", "codec", "pix_fmt"),
    [
        (".mp4", "libx264", "yuv420p"),
        (".webm", "libvpx-vp9", "yuv420p"),
        (".avi", "mpeg4", "yuv420p"),
        (".mov", "libx264", "yuv420p"),
        (".mkv", "ffv1", "yuv444p"),
    ],
)
def test_videos_of_each_container_decode(tmp_path, suffix, codec, pix_fmt):
    frames, _ = disc_frames(11, 64, 48)
    path = write_video(tmp_path / f"v{suffix}", frames, fps=12, codec=codec, pix_fmt=pix_fmt)
    info = probe_source(path)
    assert (info.kind, info.num_frames, info.width, info.height) == ("video", 11, 64, 48)
    assert info.fps == pytest.approx(12)
    got = read_frames(info, [0, 5, 10])
    assert len(got) == 3 and got[0].shape == (48, 64, 3)
    # The decoded frames are the ones asked for: the disc moves right, so compare its column.
    for frame, idx in zip(got, [0, 5, 10], strict=True):
        orange = (frame[..., 0].astype(int) - frame[..., 2]) > 60
        assert abs(np.nonzero(orange)[1].mean() - (np.nonzero(frames[idx][..., 0] > 200)[1].mean())) < 1.5


def test_gif_keeps_its_transparency(tmp_path):
    from PIL import Image

    frames, alphas = disc_frames(6, 40, 30, radius=8, rgba=True)
    pil = [Image.fromarray(f[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=8) for f in frames]
    for im, a in zip(pil, alphas, strict=True):
        px = np.asarray(im).copy()
        px[a == 0] = 7  # index 7 = transparent
        im.frombytes(px.tobytes())
    pil[0].save(
        tmp_path / "a.gif", save_all=True, append_images=pil[1:], transparency=7, duration=100, loop=0, disposal=2
    )
    info = probe_source(tmp_path / "a.gif")
    assert info.num_frames == 6
    got = read_frames(info, [0, 3])
    assert got[0].shape == (30, 40, 4)
    np.testing.assert_array_equal(got[1][..., 3] > 127, alphas[3] > 0)


def test_frame_folder_in_natural_order(tmp_path):
    from PIL import Image

    frames, _ = disc_frames(12, 32, 24)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i}.png")  # 0.png … 11.png: 10 must not sort before 2
    (tmp_path / "prompt.txt").write_text("a disc")
    info = probe_source(tmp_path, folder_fps=10)
    assert info.num_frames == 12 and info.fps == 10
    got = read_frames(info, [2, 10])
    np.testing.assert_array_equal(got[0], frames[2])
    np.testing.assert_array_equal(got[1], frames[10])


def test_frame_folder_mixed_sizes_fails(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "1.png")
    with pytest.raises(StageError, match="differ in size"):
        read_frames(probe_source(tmp_path), [0, 1])


def test_a_huge_video_is_decoded_at_a_bounded_size(tmp_path):
    """Memory stays bounded whatever the resolution: kept frames come back at most MAX_DECODE_SIDE_PX wide."""
    from stages.preprocess.video_io import MAX_DECODE_SIDE_PX

    frames, _ = disc_frames(8, 2 * MAX_DECODE_SIDE_PX, 128, radius=40)
    write_video(tmp_path / "wide.mp4", frames, fps=8)
    info = probe_source(tmp_path / "wide.mp4")
    assert (info.width, info.height) == (2 * MAX_DECODE_SIDE_PX, 128)
    out = read_frames(info, [0, 7])
    assert [f.shape for f in out] == [(64, MAX_DECODE_SIDE_PX, 3)] * 2
    for i, frame in enumerate(frames[:2]):  # a folder of large stills too
        write_rgba(tmp_path / "stills" / f"{i:03d}.png", np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)]))
    stills = read_frames(probe_source(tmp_path / "stills", folder_fps=8), [0, 1])
    assert [f.shape for f in stills] == [(64, MAX_DECODE_SIDE_PX, 4)] * 2


def test_preprocess_of_a_huge_video_records_its_crop_in_source_pixels(tmp_path):
    from stages.common.config import load_config
    from stages.preprocess import PreprocessConfig
    from stages.preprocess import run as preprocess

    frames, _ = disc_frames(8, 4096, 256, radius=60)
    write_video(tmp_path / "wide.mp4", frames, fps=8)
    cfg = load_config(PreprocessConfig, Path(__file__).resolve().parents[2] / "configs/tiny/preprocess.yaml")
    m = preprocess(cfg, input_path=tmp_path / "wide.mp4", output_dir=tmp_path / "out")
    x0, y0, x1, y1 = m.crop_box
    assert m.source_size == (4096, 256) and x1 - x0 == y1 - y0 > 100  # the disc (120 px) plus margin, in source px
