"""Render stage end to end with Blender: camera geometry, view agreement, motion metrics, bad input, batches.

Needs `bpy` (the render venv, stages/render/requirements.txt); skipped where it is not installed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from stages.common.artifacts import RenderManifest
from stages.common.cameras import load_cameras, orbit_c2w
from stages.common.config import load_config
from stages.common.errors import StageError
from stages.common.image_io import read_rgba
from stages.render import RenderConfig, run
from stages.render.framing import framing_radius, project_points
from tests.render.gltf_assets import box_corners, gltf_to_blender, translation_at, write_box_gltf

bpy = pytest.importorskip("bpy")

REPO = Path(__file__).resolve().parents[2]
SHARED_ASSETS = REPO.parent / "shared" / "assets"
FOX = REPO / "examples" / "fox" / "Fox.glb"
HALF = (0.2, 0.3, 0.1)
KEYFRAMES = [(0.0, (0.0, 0.0, -0.5)), (1.0, (0.3, 0.2, 0.5))]  # moves towards glTF +Z, the asset's front
TINY = RenderConfig(size_px=32, num_frames=3, fps=4.0, samples=2)


def tiny(**overrides) -> RenderConfig:
    """TINY with validated overrides (nested ones as dicts)."""
    return RenderConfig.model_validate({**TINY.model_dump(), **overrides})


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def box_artifact(tmp_path_factory) -> tuple[Path, RenderManifest, RenderConfig]:
    """The moving box rendered once at 64² from an elevated orbit (5 frames × (input + 4 GT views))."""
    tmp = tmp_path_factory.mktemp("box")
    asset = write_box_gltf(tmp / "box.gltf", half=HALF, keyframes=KEYFRAMES)
    config = RenderConfig(size_px=64, num_frames=0, fps=4.0, samples=4, camera={"elevation_deg": 20.0})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOURD_TRACKING", "off")
        manifest = run(config, input_path=asset, output_dir=tmp / "out")
    return tmp / "out", manifest, config


def expected_world_corners(times: list[float], config: RenderConfig) -> list[np.ndarray]:
    """The box's corners in our world at each time, derived from the glTF definition alone (module docstring
    of stages.render.framing): glTF → Blender (x, −z, y), turn −Y onto +X (+90° about z), then centre the
    clip-wide box and scale its half-diagonal to the framing radius."""
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    corners = [gltf_to_blender(box_corners(HALF) + translation_at(KEYFRAMES, t)) @ turn.T for t in times]
    clip = np.concatenate([gltf_to_blender(box_corners(HALF) + translation_at(KEYFRAMES, t)) @ turn.T for t in (0, 1)])
    lo, hi = clip.min(0), clip.max(0)
    radius = framing_radius(config.camera.radius, config.camera.fov_y_deg, config.fill_frac)
    scale = radius / (np.linalg.norm(hi - lo) / 2)
    return [(c - (lo + hi) / 2) * scale for c in corners]


def silhouette_box(rgba: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(rgba[..., 3] > 127)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_artifact_is_complete_and_valid(box_artifact):
    out, manifest, config = box_artifact
    assert RenderManifest.load(out) == manifest
    assert manifest.subject == "box" and manifest.prompt == "box" and manifest.fps == 4.0
    assert manifest.gt.num_views == 4 and manifest.gt.num_frames == 5 and manifest.gt.source_indices == list(range(5))
    assert sorted(p.name for p in (out / "input").iterdir())[:2] == ["prompt.txt", "rgba_00000.png"]
    assert load_config(RenderConfig, out / "config.yaml") == config
    info = json.loads((out / "render_info.json").read_text())
    assert info["clip"] == "move" and info["frame_times_s"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(manifest.clip_metrics) >= {"motion", "out_of_frame_frac", "travel_ratio"}


def test_saved_cameras_project_the_box_onto_its_silhouette(box_artifact):
    """Project the box's known corners with cameras.json (c2w + fov): the silhouette's bounding box must agree
    to a pixel, in every GT view and frame: proves orientation, front axis, normalisation, timing, cameras."""
    out, manifest, config = box_artifact
    cameras = load_cameras(out / manifest.gt.cameras_file)
    assert [c.azimuth_deg for c in cameras] == [0.0, 90.0, 180.0, 270.0]
    times = json.loads((out / "render_info.json").read_text())["frame_times_s"]
    for f, corners in enumerate(expected_world_corners(times, config)):
        for cam in cameras:
            w2c = np.linalg.inv(cam.c2w_array())
            p = corners @ w2c[:3, :3].T + w2c[:3, 3]  # camera coords, looking down −Z
            focal = 0.5 * config.size_px / math.tan(math.radians(cam.fov_y_deg) / 2)
            u = config.size_px / 2 + focal * p[:, 0] / -p[:, 2]
            v = config.size_px / 2 - focal * p[:, 1] / -p[:, 2]
            got = silhouette_box(read_rgba(manifest.gt.frame_path(out, cam.view, f)))
            want = (u.min(), v.min(), u.max(), v.max())
            np.testing.assert_allclose(got, want, atol=1.0, err_msg=f"view {cam.view} frame {f}")


def test_world_transform_matches_the_independent_derivation(box_artifact):
    out, _, config = box_artifact
    m = np.array(json.loads((out / "render_info.json").read_text())["asset_to_world"])
    blender = gltf_to_blender(box_corners(HALF) + translation_at(KEYFRAMES, 1.0))
    got = blender @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(got, expected_world_corners([1.0], config)[0], atol=1e-5)


def test_the_front_faces_the_azimuth_zero_camera(box_artifact):
    """The box moves towards glTF +Z (its front): it grows in the azimuth-0 view and shrinks at 180°."""
    out, manifest, _ = box_artifact

    def area(view: int, frame: int) -> int:
        return int((read_rgba(manifest.gt.frame_path(out, view, frame))[..., 3] > 127).sum())

    assert area(0, 4) > 1.3 * area(0, 0)
    assert area(2, 4) < area(2, 0) / 1.3


def test_gt_view_at_azimuth_zero_equals_the_input_view(box_artifact):
    out, manifest, _ = box_artifact
    assert manifest.input_camera == load_cameras(out / manifest.gt.cameras_file)[0].model_dump()
    for f in range(manifest.gt.num_frames):
        inp = read_rgba(out / manifest.input_dir / f"rgba_{f:05d}.png")
        np.testing.assert_array_equal(inp, read_rgba(manifest.gt.frame_path(out, 0, f)))


def test_blender_camera_uses_our_c2w_as_its_world_matrix():
    """Blender's own projection of a camera whose matrix_world is our OpenGL c2w equals our pinhole model."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 64
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    cam.data.sensor_fit, cam.data.angle_y = "VERTICAL", math.radians(45.0)
    scene.collection.objects.link(cam)
    pts = np.random.default_rng(0).uniform(-0.3, 0.3, size=(20, 3))
    for az, el in ((0.0, 0.0), (90.0, 0.0), (215.0, 25.0)):
        c2w = orbit_c2w(az, el, 1.1)
        cam.matrix_world = Matrix(c2w.tolist())
        bpy.context.view_layer.update()
        ndc = np.array([tuple(world_to_camera_view(scene, cam, Vector(p)))[:2] for p in pts])  # (0,0) bottom-left
        ours = project_points(pts, c2w, 45.0, 64) / 64
        np.testing.assert_allclose(ndc, np.stack([ours[:, 0], 1 - ours[:, 1]], 1), atol=1e-6)


def test_motion_is_zero_for_a_static_asset_and_positive_for_an_animated_one(tmp_path, box_artifact):
    static = write_box_gltf(tmp_path / "still.gltf", half=HALF)
    m = run(tiny(allow_static=True), input_path=static, output_dir=tmp_path / "still")
    assert m.clip_metrics["motion"] == 0.0 and m.clip_metrics["motion_rgb"] == 0.0
    assert m.clip_metrics["travel_ratio"] == pytest.approx(1.0)
    assert box_artifact[1].clip_metrics["motion"] > 0.1


@pytest.mark.skipif(not (SHARED_ASSETS / "alpaca.glb").is_file(), reason="needs ../shared/assets/alpaca.glb")
def test_alpaca_without_animation_is_static(tmp_path):
    config = tiny(allow_static=True)
    m = run(config, input_path=SHARED_ASSETS / "alpaca.glb", output_dir=tmp_path / "alpaca")
    assert m.clip_metrics["motion"] == 0.0
    with pytest.raises(StageError, match="has no animation"):
        run(TINY, input_path=SHARED_ASSETS / "alpaca.glb", output_dir=tmp_path / "again")


def test_fox_survey_moves(tmp_path):
    config = tiny(clip="Survey", size_px=48, fps=1.0)
    m = run(config, input_path=FOX, output_dir=tmp_path / "fox")
    assert m.clip_metrics["motion"] > 0.05
    assert m.clip_metrics["out_of_frame_frac"] == 0.0


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "asset not found"),
        ("unsupported", "unsupported asset format '.stl'"),
        ("garbage", "Blender could not import"),
        ("no_animation", "has no animation"),
        ("zero_frames", "zero frames"),
        ("unknown_clip", "no animation clip 'Dance'"),
    ],
)
def test_bad_input_gives_one_clear_error_and_writes_nothing(tmp_path, case, match):
    inputs = tmp_path / "in"
    inputs.mkdir()
    config = TINY
    match case:
        case "missing":
            asset = inputs / "nothing.glb"
        case "unsupported":
            asset = inputs / "mesh.stl"
            asset.write_text("solid x\nendsolid x\n")
        case "garbage":
            asset = inputs / "junk.glb"
            asset.write_bytes(b"glTF but not really")
        case "no_animation":
            asset = write_box_gltf(inputs / "still.gltf")
        case "zero_frames":
            asset = write_box_gltf(inputs / "box.gltf", keyframes=KEYFRAMES)
            config = tiny(start_s=5.0, num_frames=0)
        case "unknown_clip":
            asset = write_box_gltf(inputs / "box.gltf", keyframes=KEYFRAMES)
            config = tiny(clip="Dance")
    with pytest.raises(StageError, match=match):
        run(config, input_path=asset, output_dir=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], "nothing written, no staging left over"


def test_curation_rejects_a_static_clip_and_writes_nothing(tmp_path):
    asset = write_box_gltf(tmp_path / "still.gltf")
    config = tiny(allow_static=True, curation={"curate": True})
    with pytest.raises(StageError, match=r"rejected by curation: motion 0 < min_motion"):
        run(config, input_path=asset, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_batch_renders_each_asset_and_reports_failures(tmp_path):
    folder = tmp_path / "assets"
    folder.mkdir()
    write_box_gltf(folder / "box.gltf", keyframes=KEYFRAMES)
    write_box_gltf(folder / "still.gltf")
    (folder / "junk.glb").write_bytes(b"nope")
    (folder / "notes.txt").write_text("not an asset")
    with pytest.raises(StageError, match=r"2 of 3 assets failed \(junk.glb, still.gltf\)"):
        run(TINY, input_path=folder, output_dir=tmp_path / "out")
    assert RenderManifest.load(tmp_path / "out" / "box").subject == "box"
    summary = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert [(e["subject"], e["status"]) for e in summary["entries"]] == [
        ("box", "rendered"),
        ("junk", "failed"),
        ("still", "failed"),
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["batch.json", "box"]


def test_training_clips_ring_and_determinism(tmp_path):
    asset = write_box_gltf(tmp_path / "box.gltf", keyframes=KEYFRAMES)
    config = tiny(num_frames=2, train={"enabled": True, "num_views": 4})
    m = run(config, input_path=asset, output_dir=tmp_path / "a")
    assert m.train_dir == "train"
    cams = load_cameras(tmp_path / "a" / "train" / "cameras.json")
    assert [c.azimuth_deg for c in cams] == [-180.0, -90.0, 0.0, 90.0]
    assert (tmp_path / "a" / "train" / "caption.txt").read_text().strip() == "box"
    for f in range(2):  # train view 2 (azimuth 0, elevation 0) is the GT front view
        np.testing.assert_array_equal(
            read_rgba(tmp_path / "a" / f"train/v02/rgba_{f:05d}.png"), read_rgba(m.gt.frame_path(tmp_path / "a", 0, f))
        )
    run(config, input_path=asset, output_dir=tmp_path / "b")
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
