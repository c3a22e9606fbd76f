from __future__ import annotations

import numpy as np
import pytest

from stages.common.cameras import (
    OrbitCamera,
    focal_length_px,
    fourdm_camera_vectors,
    frame_time,
    imagedream_c2w,
    imagedream_to_threestudio_azimuth,
    load_cameras,
    orbit_c2w,
    save_cameras,
    threestudio_to_imagedream_azimuth,
)

ANGLES = [(a, e) for a in (-180.0, -37.5, 0.0, 45.0, 90.0, 133.0, 270.0) for e in (-30.0, 0.0, 5.0, 60.0)]


@pytest.mark.parametrize(("azimuth", "elevation"), ANGLES)
def test_orbit_c2w_is_a_camera_looking_at_the_origin(azimuth, elevation):
    c2w = orbit_c2w(azimuth, elevation, radius=2.5)
    rot, pos = c2w[:3, :3], c2w[:3, 3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    assert np.linalg.norm(pos) == pytest.approx(2.5)
    # OpenGL: the camera looks down its −Z axis, so the origin sits at (0, 0, −radius) in camera space.
    origin_cam = np.linalg.inv(c2w) @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(origin_cam[:3], [0, 0, -2.5], atol=1e-12)
    # The world's up (+z) projects onto the camera's +Y, never its −Y (no upside-down cameras).
    assert rot[:, 1] @ np.array([0, 0, 1.0]) > 0
    np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])


def test_orbit_front_and_side_positions():
    np.testing.assert_allclose(orbit_c2w(0, 0, 1)[:3, 3], [1, 0, 0], atol=1e-12)  # azimuth 0: front, on +x
    np.testing.assert_allclose(orbit_c2w(90, 0, 1)[:3, 3], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(orbit_c2w(0, 90 - 1e-9, 1)[:3, 3], [0, 0, 1], atol=1e-6)
    with pytest.raises(ValueError, match="elevation"):
        orbit_c2w(0, 90, 1)


@pytest.mark.parametrize(("azimuth", "elevation"), ANGLES)
def test_imagedream_azimuth_is_ours_plus_90(azimuth, elevation):
    """Spec §1.3: ImageDream `get_camera` azimuth a is the threestudio camera at a − 90°."""
    ours = orbit_c2w(azimuth, elevation, 1.0)
    theirs = imagedream_c2w(threestudio_to_imagedream_azimuth(azimuth), elevation)
    np.testing.assert_allclose(theirs, ours, atol=1e-12)
    assert imagedream_to_threestudio_azimuth(threestudio_to_imagedream_azimuth(azimuth)) == azimuth


def test_imagedream_convention_differs_without_the_offset():
    assert not np.allclose(imagedream_c2w(30.0, 0.0), orbit_c2w(30.0, 0.0, 1.0), atol=1e-3)


def test_fourdm_cameras_equal_the_demo_get_camera_call():
    """4DM demo: get_camera(4, elevation=0, azimuth_start=90, azimuth_span=360, extra_view=True)."""
    vectors = fourdm_camera_vectors([0, 90, 180, 270], elevation_deg=0.0)
    expected = [imagedream_c2w(a, 0.0).reshape(16) for a in (90, 180, 270, 360)] + [np.zeros(16)]
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, np.stack(expected), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors[:4].reshape(4, 4, 4)[:, :3, 3], axis=1), 1.0, atol=1e-6)


def test_frame_time():
    assert [frame_time(i, 8) for i in (0, 7)] == [0.0, 1.0]
    assert frame_time(3, 7) == pytest.approx(0.5)
    assert frame_time(0, 1) == 0.0
    with pytest.raises(ValueError):
        frame_time(8, 8)


def test_focal_length():
    assert focal_length_px(90.0, 256) == pytest.approx(128.0)


def test_cameras_json_round_trip(tmp_path):
    cams = [OrbitCamera.from_angles(v, 90.0 * v, 0.0, 1.1, 45.0) for v in range(4)]
    save_cameras(tmp_path / "cameras.json", cams)
    again = load_cameras(tmp_path / "cameras.json")
    assert again == cams
    np.testing.assert_allclose(again[1].c2w_array(), orbit_c2w(90.0, 0.0, 1.1))
