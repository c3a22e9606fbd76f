from __future__ import annotations

import numpy as np
import pytest

from stages.common.errors import StageError
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
