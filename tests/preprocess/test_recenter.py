from __future__ import annotations

import numpy as np
import pytest

from stages.common.errors import StageError
from stages.preprocess.recenter import crop_and_resize, square_crop_box, union_box
from tests.synthetic import disc_centers, disc_frames


def test_union_box_of_a_moving_disc():
    _, alphas = disc_frames(5, 96, 64, radius=10)
    centers = disc_centers(5, 96, 64)
    x0, y0, x1, y1 = union_box(alphas, 0.5)
    assert x0 == pytest.approx(centers[0][0] - 10, abs=1) and x1 == pytest.approx(centers[-1][0] + 10, abs=1)
    assert y0 == pytest.approx(centers[0][1] - 10, abs=1) and y1 == pytest.approx(centers[0][1] + 10, abs=1)


def test_union_box_empty_frame_is_an_error():
    alphas = [np.ones((4, 4)), np.zeros((4, 4))]
    with pytest.raises(StageError, match="empty foreground mask in kept frame 1"):
        union_box(alphas, 0.5)


def test_square_crop_box_margin():
    box = square_crop_box((10, 20, 50, 40), 0.1)  # 40 x 20 object
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0 == 50  # 40 / 0.8
    assert (x0 + x1) / 2 == 30 and (y0 + y1) / 2 == 30
    assert square_crop_box((0, 0, 7, 7), 0.0) == (0, 0, 7, 7)


@pytest.mark.parametrize("size_px", [32, 128])  # shrink (area) and enlarge (bilinear)
def test_recentre_keeps_the_moving_object_whole_and_centred(size_px):
    frames, alphas = disc_frames(6, 96, 64, radius=10, rgba=True)
    margin = 0.15
    crop = square_crop_box(union_box(alphas, 0.5), margin)
    outs = [crop_and_resize(f, crop, size_px) for f in frames]
    union = np.zeros((size_px, size_px), bool)
    for out in outs:
        assert out.shape == (size_px, size_px, 4) and out.dtype == np.uint8
        union |= out[..., 3] > 127
        # Nothing of the object is cut: all its alpha mass is still there (area scales by (size/side)^2).
        side = crop[2] - crop[0]
        assert out[..., 3].sum() / 255 == pytest.approx(np.pi * 10**2 * (size_px / side) ** 2, rel=0.08)
    ys, xs = np.nonzero(union)
    # The clip's union box is centred and fills 1 - 2·margin of the frame along its longer side.
    assert (xs.min() + xs.max() + 1) / 2 == pytest.approx(size_px / 2, abs=1.0)
    assert (ys.min() + ys.max() + 1) / 2 == pytest.approx(size_px / 2, abs=1.0)
    assert (xs.max() + 1 - xs.min()) / size_px == pytest.approx(1 - 2 * margin, abs=2.0 / size_px + 0.01)
    # The margin is empty.
    edge = int(size_px * margin) - 1
    assert union[:, :edge].sum() == union[:, -edge:].sum() == 0


def test_crop_outside_the_image_is_transparent_and_colour_has_no_dark_fringe():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (255, 255, 255)
    rgba[2:8, 2:8, 3] = 255  # white square, transparent white elsewhere
    rgba[np.where(rgba[..., 3] == 0)] = (0, 0, 0, 0)  # transparent pixels carry black colour
    out = crop_and_resize(rgba, (-5, -5, 15, 15), 7)
    assert out[0, 0, 3] == 0 and out[-1, -1, 3] == 0
    visible = out[..., 3] > 0
    assert visible.any()
    assert out[visible][:, :3].min() >= 254  # premultiplied resize: edges stay white, not grey
