"""Pure geometry and metrics of the render stage (no `bpy` needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.common.cameras import orbit_c2w
from stages.common.cli import cli_main
from stages.common.errors import StageError
from stages.render import RenderConfig, run
from stages.render.config import CurationConfig
from stages.render.framing import (
    FORWARD_YAW_DEG,
    frame_times,
    framing_radius,
    normalisation_matrix,
    project_points,
    yaw_matrix,
)
from stages.render.metrics import compute_clip_metrics, curation_failures


@pytest.mark.parametrize("axis", sorted(FORWARD_YAW_DEG))
def test_forward_axis_is_turned_onto_plus_x(axis):
    vec = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0)}[axis]
    turned = yaw_matrix(FORWARD_YAW_DEG[axis])[:3, :3] @ np.array(vec, dtype=float)
    np.testing.assert_allclose(turned, [1, 0, 0], atol=1e-12)


def test_framing_radius_sphere_silhouette_spans_fill_fraction():
    d, fov, fill = 1.1, 45.0, 0.8
    r = framing_radius(d, fov, fill)
    # The silhouette edge is the tangent ray: angle asin(r/d) from the axis; its image height over tan(fov/2).
    assert math.tan(math.asin(r / d)) / math.tan(math.radians(fov / 2)) == pytest.approx(fill)


def test_normalisation_centres_and_scales_the_bounding_box():
    rng = np.random.default_rng(0)
    pts = rng.uniform([-3, 10, 0], [5, 14, 2], size=(500, 3))
    m, info = normalisation_matrix(pts, 90.0, 0.5)
    out = pts @ m[:3, :3].T + m[:3, 3]
    lo, hi = out.min(0), out.max(0)
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-12)
    assert np.linalg.norm(hi - lo) / 2 == pytest.approx(0.5)
    assert info["scale"] == pytest.approx(0.5 / (np.linalg.norm(pts.max(0) - pts.min(0)) / 2))


def test_normalisation_rejects_empty_and_degenerate_geometry():
    with pytest.raises(StageError, match="no mesh vertices"):
        normalisation_matrix(np.empty((0, 3)), 0.0, 0.5)
    with pytest.raises(StageError, match="zero size"):
        normalisation_matrix(np.ones((4, 3)), 0.0, 0.5)


def test_frame_times_sample_the_clip_and_refuse_impossible_requests():
    assert frame_times(1.0, 4.0, 0, 0.0, static=False) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert frame_times(3.4167, 24.0, 3, 0.5, static=False) == pytest.approx([0.5, 0.5 + 1 / 24, 0.5 + 2 / 24])
    assert frame_times(0.0, 24.0, 3, 0.0, static=True) == [0.0, 0.0, 0.0]
    assert frame_times(0.0, 24.0, 0, 0.0, static=True) == [0.0]
    with pytest.raises(StageError, match="zero frames"):
        frame_times(1.0, 24.0, 0, 2.0, static=False)
    with pytest.raises(StageError, match="has 25 frames, num_frames asks for 30"):
        frame_times(1.0, 24.0, 30, 0.0, static=False)


def test_projection_of_the_orbit_target_is_the_image_centre_and_up_is_up():
    c2w = orbit_c2w(37.0, 10.0, 1.1)
    px = project_points(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.2]]), c2w, 45.0, 64)
    np.testing.assert_allclose(px[0], [32, 32], atol=1e-9)
    assert px[1, 1] < px[0, 1]  # +z (world up) is up in the image (smaller row)


def test_config_requires_orthogonal_gt_views_first_and_train_views_in_fours():
    RenderConfig(gt_azimuths_deg=(0, 90, 180, 270, 45))
    with pytest.raises(ValueError, match="must start with 0, 90, 180, 270"):
        RenderConfig(gt_azimuths_deg=(0, 45, 90, 135))
    with pytest.raises(ValueError, match="multiple of 4"):
        RenderConfig(train={"enabled": True, "num_views": 30})


def _disc_clip(centres: list[tuple[int, int]], size: int = 32, radius: int = 5) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for cx, cy in centres:
        rgba = np.zeros((size, size, 4), np.uint8)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        rgba[inside] = (200, 100, 50, 255)
        frames.append(rgba)
    return np.stack(frames)[None]  # (1, F, H, W, 4)


def test_metrics_static_clip_has_zero_motion_and_moving_clip_has_some():
    still = compute_clip_metrics(_disc_clip([(16, 16)] * 3), 1.0)
    assert still["motion"] == 0.0 and still["motion_rgb"] == 0.0 and still["out_of_frame_frac"] == 0.0
    moving = compute_clip_metrics(_disc_clip([(10, 16), (16, 16), (22, 16)]), 1.0)
    assert moving["motion"] > 0.5 and moving["motion_rgb"] > 0.1
    border = compute_clip_metrics(_disc_clip([(16, 16), (2, 16)]), 1.0)
    assert border["out_of_frame_frac"] == 0.5
    assert curation_failures(still, CurationConfig())[0].startswith("motion 0 < min_motion")
    assert curation_failures(moving, CurationConfig()) == []


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    status = cli_main(run, RenderConfig, ["--input", str(tmp_path / "x.glb"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1] == f"error: asset not found: {tmp_path / 'x.glb'}"
