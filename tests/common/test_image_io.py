from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from stages.common.errors import StageError
from stages.common.image_io import (
    FRAME_TEMPLATE,
    VIEW_FRAME_TEMPLATE,
    composite_on_white,
    read_image,
    read_rgba,
    write_preview_video,
    write_rgba,
)


def random_rgba(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def test_rgba_png_round_trip_is_exact(tmp_path):
    rgba = random_rgba()
    write_rgba(tmp_path / "sub" / "a.png", rgba)
    back = read_rgba(tmp_path / "sub" / "a.png")
    assert back.dtype == np.uint8 and back.shape == (5, 7, 4)
    np.testing.assert_array_equal(back, rgba)


def test_png_bytes_are_deterministic(tmp_path):
    write_rgba(tmp_path / "a.png", random_rgba())
    write_rgba(tmp_path / "b.png", random_rgba())
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_write_rgba_rejects_wrong_arrays(tmp_path):
    with pytest.raises(ValueError):
        write_rgba(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        write_rgba(tmp_path / "a.png", np.zeros((4, 4, 4), np.float32))


def test_read_image_keeps_rgb_and_expands_modes(tmp_path):
    rgb = random_rgba()[..., :3]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png").shape == (5, 7, 3)
    np.testing.assert_array_equal(read_rgba(tmp_path / "rgb.png")[..., 3], 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    assert read_image(tmp_path / "rgb.jpg").shape == (5, 7, 3)
    # Palette image with a transparent index → RGBA with that index transparent.
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    got = read_image(tmp_path / "pal.png")
    assert got.shape == (2, 2, 4)
    np.testing.assert_array_equal(got[..., 3], [[0, 255], [255, 0]])
    # 16-bit grey → 8-bit RGB.
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), 255)


def test_read_image_errors(tmp_path):
    with pytest.raises(StageError, match="not found"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(StageError, match="not a readable image"):
        read_image(tmp_path / "bad.png")


def test_composite_on_white_known_values():
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [100, 50, 0, 128]]], np.uint8)
    out = composite_on_white(rgba)
    a = 128 / 255
    expected = np.round(
        np.array([[255] * 3, [0] * 3, [100 * a + 255 * (1 - a), 50 * a + 255 * (1 - a), 255 * (1 - a)]])
    )
    np.testing.assert_array_equal(out[0], expected.astype(np.uint8))


def test_templates():
    assert FRAME_TEMPLATE.format(frame=3) == "rgba_00003.png"
    assert VIEW_FRAME_TEMPLATE.format(view=2, frame=11) == "v02/rgba_00011.png"


def test_preview_video_decodes_to_the_frames(tmp_path):
    frames = [np.full((31, 45, 3), (40 * i, 200, 255 - 40 * i), np.uint8) for i in range(5)]
    write_preview_video(tmp_path / "p.mp4", frames, fps=7.68)
    with av.open(str(tmp_path / "p.mp4")) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264"
        assert float(stream.average_rate) == pytest.approx(7.68, rel=1e-3)
    assert len(decoded) == 5 and decoded[0].shape == (32, 46, 3)  # padded to even sides
    for got, want in zip(decoded, frames, strict=True):
        assert np.abs(got[:31, :45].astype(int) - want).mean() < 3
