"""Pairing by camera and by input-frame index, never by file order."""

from __future__ import annotations

import pytest

from stages.common.cameras import OrbitCamera
from stages.common.errors import StageError
from stages.eval.pairing import angle_diff_deg, pair_frames, pair_views


def cams(azimuths, elevation=0.0):
    return [OrbitCamera.from_angles(v, a, elevation, 2.0, 40.0) for v, a in enumerate(azimuths)]


def test_angle_difference_wraps_around():
    assert angle_diff_deg(359.6, 0.0) == pytest.approx(0.4)
    assert angle_diff_deg(-90.0, 270.0) == pytest.approx(0.0)
    assert angle_diff_deg(10.0, 190.0) == pytest.approx(180.0)


def test_views_pair_by_camera_whatever_the_order():
    pairs = pair_views(cams([0, 90, 180, 270]), cams([180.3, -90.2, 0.0, 89.9]), tolerance_deg=1.0)
    assert [(p.view, g.view) for p, g in pairs] == [(0, 2), (1, 3), (2, 0), (3, 1)]


def test_extra_ground_truth_views_are_left_out():
    pairs = pair_views(cams([0, 90]), cams([45, 90, 0, 135]), tolerance_deg=1.0)
    assert [(p.view, g.view) for p, g in pairs] == [(0, 2), (1, 1)]


@pytest.mark.parametrize(
    ("pred", "gt", "elevation_gt", "message"),
    [
        ([0, 90, 180, 270], [0, 90, 180, 260], 0.0, "view 3 .*270.* has no ground-truth view within 1°"),
        ([0, 90], [0, 90], 15.0, "view 0 .* has no ground-truth view"),
        ([0, 90], [0, 0.5, 90], 0.0, "matches several ground-truth views"),
    ],
)
def test_views_that_cannot_be_paired_fail_clearly(pred, gt, elevation_gt, message):
    with pytest.raises(StageError, match=message):
        pair_views(cams(pred), cams(gt, elevation_gt), tolerance_deg=1.0)


def test_two_predictions_on_one_ground_truth_view_fail():
    with pytest.raises(StageError, match="same ground-truth view"):
        pair_views(cams([0, 5]), cams([2.5, 90]), tolerance_deg=3.0)


def test_frames_pair_by_source_index_in_time_order():
    assert pair_frames([6, 0, 3], [9, 6, 3, 0, 12]) == [(1, 3, 0), (2, 2, 3), (0, 1, 6)]


@pytest.mark.parametrize(
    ("pred", "gt", "message"),
    [
        ([0, 3, 30], [0, 3, 6], r"input frames \[30\] that the ground truth does not have"),
        ([0, 3, 3], [0, 3, 6], "prediction source_indices repeat a frame"),
        ([0, 3], [0, 3, 3], "ground truth source_indices repeat a frame"),
        ([], [0], "no frames"),
    ],
)
def test_frames_that_cannot_be_paired_fail_clearly(pred, gt, message):
    with pytest.raises(StageError, match=message):
        pair_frames(pred, gt)
