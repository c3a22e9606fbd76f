"""Per-timestamp mesh export: marching cubes of known density fields, files read back by trimesh and by hand."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.distill.config import MeshConfig
from stages.distill.export import MESH_AXES, export_meshes, extract_mesh
from stages.distill.fields import DynamicNeRFField
from stages.distill.fields.dynamic_field import FieldOutputs

trimesh = pytest.importorskip("trimesh")

TINY_FIELD = dict(num_levels=2, features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0,
                  hidden_dim=8)  # fmt: skip


def blob_only_field() -> DynamicNeRFField:
    """Zero grids and MLPs: density = softplus(λ(1 − ‖x‖/r)) (the blob bias alone), rgb = sigmoid(0) = 0.5."""
    field = DynamicNeRFField(**TINY_FIELD, blob_density=10.0, blob_radius=0.5)
    with torch.no_grad():
        for p in field.parameters():
            p.zero_()
    return field


def blob_radius_at(threshold: float, blob_density: float = 10.0, blob_radius: float = 0.5) -> float:
    """‖x‖ where softplus(λ(1 − ‖x‖/r)) = threshold."""
    return blob_radius * (1.0 - math.log(math.expm1(threshold)) / blob_density)


class GrowingColouredSphere(DynamicNeRFField):
    """Density 100·(r(t) − ‖x‖) + 50 (surface at 50: ‖x‖ = r(t) = 0.3 + 0.4·t), rgb = (x + 1) / 2 per axis."""

    def density(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (100.0 * (0.3 + 0.4 * t - x.norm(dim=-1)) + 50.0).clamp(min=0.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> FieldOutputs:
        return FieldOutputs(density=self.density(x, t), rgb=((x + 1.0) / 2.0).clamp(0.0, 1.0))


def to_world(file_points: np.ndarray) -> np.ndarray:
    return np.asarray(file_points, dtype=np.float64) @ MESH_AXES  # MESH_AXES is a rotation: its inverse is .T


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (V, 3), colours (V, 3), 0-based faces (F, 3) of an OBJ with `v x y z r g b` lines."""
    rows, faces = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            rows.append([float(v) for v in line.split()[1:]])
        elif line.startswith("f "):
            faces.append([int(v) - 1 for v in line.split()[1:]])
    rows_a = np.array(rows).reshape(-1, 6)
    return rows_a[:, :3], rows_a[:, 3:], np.array(faces, dtype=np.int64).reshape(-1, 3)


def read_glb_json(path: Path) -> dict:
    magic, version, length = struct.unpack_from("<4sII", path.read_bytes())
    assert (magic, version, length) == (b"glTF", 2, path.stat().st_size)
    size, kind = struct.unpack_from("<I4s", path.read_bytes(), 12)
    assert kind == b"JSON" and size % 4 == 0
    return json.loads(path.read_bytes()[20 : 20 + size])


def load_mesh(path: Path):
    loaded = trimesh.load(str(path), process=False)
    if isinstance(loaded, trimesh.Scene):
        (loaded,) = loaded.geometry.values()
    return loaded


def test_blob_sphere_lies_at_the_analytic_radius_and_both_files_load_back(tmp_path):
    threshold, resolution = 5.0, 48
    voxel = 2.0 / (resolution - 1)
    radius = blob_radius_at(threshold)  # 0.2503
    seq = export_meshes(
        tmp_path, blob_only_field(), [0.0, 1.0], resolution=resolution, threshold=threshold, formats=("obj", "glb")
    )
    assert seq.file_list() == [
        "meshes/mesh_00000.obj",
        "meshes/mesh_00001.obj",
        "meshes/mesh_00000.glb",
        "meshes/mesh_00001.glb",
    ]
    assert seq.num_frames == 2 and seq.resolution == resolution and seq.threshold == threshold
    assert all(n > 100 for n in seq.num_vertices) and all(n > 100 for n in seq.num_faces)
    for frame in (0, 1):
        # OBJ, parsed by hand: every vertex at the analytic radius within a voxel (linear interpolation along
        # grid edges is in fact much closer), the grey of sigmoid(0) as display value.
        vertices, colours, faces = read_obj(seq.frame_path(tmp_path, "obj", frame))
        assert len(vertices) == seq.num_vertices[frame] and len(faces) == seq.num_faces[frame]
        r = np.linalg.norm(to_world(vertices), axis=1)
        assert np.abs(r - radius).max() < voxel
        assert np.abs(r - radius).max() < 0.2 * voxel
        np.testing.assert_allclose(colours, 0.5, atol=1e-5)
        # trimesh reads both files: a closed, outward-oriented sphere of the right volume.
        for fmt in ("obj", "glb"):
            mesh = load_mesh(seq.frame_path(tmp_path, fmt, frame))
            assert len(mesh.vertices) == seq.num_vertices[frame] and len(mesh.faces) == seq.num_faces[frame]
            assert mesh.is_watertight and mesh.is_winding_consistent
            assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)  # > 0: normals point out
            np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), r, atol=1e-5)
        # glTF's COLOR_0 is linear: sRGB 0.5 is ((0.5 + 0.055) / 1.055)^2.4 = 0.2140.
        glb = load_mesh(seq.frame_path(tmp_path, "glb", frame))
        np.testing.assert_allclose(glb.visual.vertex_attributes["color"], ((0.5 + 0.055) / 1.055) ** 2.4, rtol=1e-5)
        assert glb.visual.material.metallicFactor == 0


def test_each_frame_has_its_own_surface_vertex_colours_and_glTF_axes(tmp_path):
    field = GrowingColouredSphere(**TINY_FIELD)
    times = [0.0, 0.5, 1.0]
    seq = export_meshes(tmp_path, field, times, resolution=40, threshold=50.0, formats=("glb", "obj"))
    voxel = 2.0 / 39
    for frame, t in enumerate(times):
        vertices, colours, _ = read_obj(seq.frame_path(tmp_path, "obj", frame))
        world = to_world(vertices)
        assert np.abs(np.linalg.norm(world, axis=1) - (0.3 + 0.4 * t)).max() < 0.1 * voxel
        # Colours are the field's rgb at the vertex: (world + 1) / 2, so the axes mapping is checked too.
        np.testing.assert_allclose(colours, (world + 1.0) / 2.0, atol=2e-5)
        glb = read_glb_json(seq.frame_path(tmp_path, "glb", frame))
        position = glb["accessors"][glb["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
        assert position["count"] == seq.num_vertices[frame]
        np.testing.assert_allclose(position["max"], vertices.max(axis=0), atol=1e-6)
        assert glb["materials"][0]["extensions"] == {"KHR_materials_unlit": {}}
    # The file's +Y is the world's up (+z); +Z points at the input camera (world +x).
    top = to_world(np.array([[0.0, 1.0, 0.0]]))[0]
    front = to_world(np.array([[0.0, 0.0, 1.0]]))[0]
    np.testing.assert_array_equal(top, [0, 0, 1])
    np.testing.assert_array_equal(front, [1, 0, 0])
    assert np.linalg.det(MESH_AXES) == pytest.approx(1.0)


def test_no_surface_gives_valid_empty_files(tmp_path):
    field = blob_only_field()  # density ≤ softplus(10) ≈ 10
    seq = export_meshes(tmp_path, field, [0.0], resolution=16, threshold=25.0, formats=("obj", "glb"))
    assert seq.num_vertices == [0] and seq.num_faces == [0]
    vertices, _, faces = read_obj(seq.frame_path(tmp_path, "obj", 0))
    assert len(vertices) == 0 and len(faces) == 0
    glb = read_glb_json(seq.frame_path(tmp_path, "glb", 0))
    assert glb["scenes"] == [{"nodes": []}] and "meshes" not in glb
    assert len(extract_mesh(field, 0.0, resolution=16, threshold=25.0).faces) == 0


def test_mesh_config_is_off_by_default_and_validated():
    assert MeshConfig().enabled is False and MeshConfig().formats == ("obj", "glb")
    with pytest.raises(ValueError):
        MeshConfig(formats=())
    with pytest.raises(ValueError):
        MeshConfig(formats=("ply",))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MeshConfig(threshold=0.0)
