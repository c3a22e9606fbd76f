"""Exports of a trained field: the weights with their constructor arguments, renders at fixed cameras, a preview.

`field.safetensors` is the `DynamicNeRFField` state dict and `field_config.json` its constructor keyword arguments
(as diffusers' `save_pretrained` does), so `load_field(dir)` rebuilds it with either hash grid backend;
`occupancy.safetensors` holds the occupancy grid the renders used.

Meshes (optional, `mesh` config): per timestamp, the density is sampled on a regular grid over the scene box and
marching cubes (PyMCubes) extracts the surface where it equals `threshold`; vertices are coloured with the field's
rgb there (view-independent, so exact at the vertex). Files use glTF's axes, Y up (`MESH_AXES`): `.obj` with
per-vertex colours (`v x y z r g b`, display values as the renders) and `.glb` (glTF 2.0 binary, written here:
positions, `COLOR_0` converted to linear as glTF defines it, indices, one unlit material, since the colours
already hold the lighting).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stages.common.artifacts import MeshSequence
from stages.common.cameras import OrbitCamera
from stages.common.errors import StageError
from stages.distill.cameras import camera_rays
from stages.distill.fields import DynamicNeRFField
from stages.distill.renderer import OccupancyGrid, render_rays

__all__ = [
    "save_field",
    "load_field",
    "render_rgba",
    "orbit_trajectory",
    "Mesh",
    "extract_mesh",
    "export_meshes",
    "write_obj",
    "write_glb",
    "require_mesh_libraries",
    "FIELD_FILE",
    "FIELD_CONFIG_FILE",
    "MESH_TEMPLATES",
    "MESH_AXES",
]

log = logging.getLogger(__name__)

FIELD_FILE = "field.safetensors"
FIELD_CONFIG_FILE = "field_config.json"
OCCUPANCY_FILE = "occupancy.safetensors"
MESH_TEMPLATES: dict[Literal["obj", "glb"], str] = {
    "obj": "meshes/mesh_{frame:05d}.obj",
    "glb": "meshes/mesh_{frame:05d}.glb",
}
MESH_AXES = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
"""File coordinates = MESH_AXES @ world: (X, Y, Z) = (y, z, x). The world is z-up with the input camera on +x
(stages/common/cameras.py); glTF is +Y up with the front facing +Z. A rotation (det +1), so windings keep."""
_POINT_CHUNK = 1 << 18


def save_field(directory: Path, field: DynamicNeRFField, kwargs: dict, occupancy: OccupancyGrid) -> list[str]:
    """Write the three field files into `directory`; returns their names."""
    directory = Path(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in field.state_dict().items()}, str(directory / FIELD_FILE))
    record = {"_class_name": "DynamicNeRFField", **kwargs, "occupancy_resolution": occupancy.resolution}
    (directory / FIELD_CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.contiguous().cpu() for k, v in occupancy.state_dict().items()}, str(directory / OCCUPANCY_FILE))
    return [FIELD_FILE, FIELD_CONFIG_FILE, OCCUPANCY_FILE]


def load_field(directory: Path, backend: str | None = None) -> DynamicNeRFField:
    """Rebuild a saved field, optionally with another hash grid backend (the parameter layout is shared)."""
    kwargs = json.loads((Path(directory) / FIELD_CONFIG_FILE).read_text(encoding="utf-8"))
    kwargs.pop("_class_name")
    kwargs.pop("occupancy_resolution")
    if backend is not None:
        kwargs["backend"] = backend
    field = DynamicNeRFField(**kwargs)
    field.load_state_dict(load_file(str(Path(directory) / FIELD_FILE)))
    return field


@torch.no_grad()
def render_rgba(
    field: DynamicNeRFField,
    occupancy: OccupancyGrid,
    camera: OrbitCamera,
    time: float,
    size_px: int,
    *,
    step_size: float,
    alpha_threshold: float,
    early_stop_eps: float,
    ray_batch: int = 1 << 16,
) -> np.ndarray:
    """A deterministic render as uint8 (H, W, 4) straight-alpha RGBA (alpha = opacity; colour = Σ w·c / opacity)."""
    device = occupancy.binary.device
    rays = camera_rays(camera, size_px, device)
    colour, alpha = [], []
    for start in range(0, size_px * size_px, ray_batch):
        sl = slice(start, start + ray_batch)
        sub = type(rays)(rays.origins[sl], rays.directions[sl])
        out = render_rays(
            field,
            sub,
            torch.full((sub.origins.shape[0],), time, device=device),
            occupancy,
            step_size=step_size,
            alpha_threshold=alpha_threshold,
            early_stop_eps=early_stop_eps,
            background=0.0,
        )
        colour.append(out.rgb)
        alpha.append(out.opacity)
    premultiplied, opacity = torch.cat(colour), torch.cat(alpha).clamp(0.0, 1.0)
    straight = (premultiplied / opacity.clamp(min=1e-6)[:, None]).clamp(0.0, 1.0)
    rgba = torch.cat([straight, opacity[:, None]], dim=-1).reshape(size_px, size_px, 4)
    return (rgba * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


def orbit_trajectory(num_frames: int, segments: int) -> list[tuple[float, int]]:
    """(azimuth_deg, frame) per preview image: per segment, F images at a fixed azimuth while time plays, then F
    images turning by 360°/segments while time plays again (the official `constant` test trajectory)."""
    out = []
    span = 360.0 / segments
    for seg in range(segments):
        out += [(seg * span, f) for f in range(num_frames)]
        out += [(seg * span + span * (f + 1) / num_frames, f) for f in range(num_frames)]
    return out


@dataclass
class Mesh:
    """A triangle mesh in world coordinates. vertices (V, 3) float32; faces (F, 3) int64, counter-clockwise seen
    from outside (normals point out of the dense region); colours (V, 3) float32 in [0, 1] (display values)."""

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray


def require_mesh_libraries() -> None:
    """Fail early (before training) when mesh export is asked for but PyMCubes is not installed.

    Raises:
        StageError: `mcubes` cannot be imported.
    """
    try:
        import mcubes  # noqa: F401
    except ImportError:
        raise StageError(
            "mesh.enabled needs PyMCubes (marching cubes): pip install PyMCubes==0.1.6 (pyproject.toml pins it)"
        ) from None


@torch.no_grad()
def extract_mesh(field: DynamicNeRFField, time: float, *, resolution: int, threshold: float) -> Mesh:
    """The surface where the density at time `time` equals `threshold`, from a resolution³ grid over the box.

    Args:
        field: the trained field (on any device); its `bbox_radius` R bounds the grid [-R, R]³, whose samples are
            2R / (resolution − 1) apart.
        time: the timestamp in [0, 1].
        resolution: samples per side (≥ 2).
        threshold: density of the surface, per world unit (> 0).

    Returns:
        The mesh, empty (no vertices) where the density never reaches the threshold. The surface is open where
        it meets the box's faces.
    """
    import mcubes

    if resolution < 2 or not threshold > 0:
        raise ValueError(f"need resolution >= 2 and threshold > 0, got {resolution}, {threshold}")
    device = next(iter(field.parameters())).device
    radius = float(field.bbox_radius)
    axis = torch.linspace(-radius, radius, resolution, dtype=torch.float32, device=device)
    count = resolution**3
    density = torch.empty(count, dtype=torch.float32, device=device)
    for start in range(0, count, _POINT_CHUNK):
        index = torch.arange(start, min(start + _POINT_CHUNK, count), device=device)
        ijk = torch.stack([index // (resolution * resolution), (index // resolution) % resolution, index % resolution])
        x = axis[ijk].T  # (n, 3), x-major like the volume below
        density[start : start + len(index)] = field.density(x, torch.full((len(index),), time, device=device))
    volume = density.reshape(resolution, resolution, resolution).cpu().numpy()
    grid_vertices, faces = mcubes.marching_cubes(volume, float(threshold))
    vertices = (grid_vertices * (2.0 * radius / (resolution - 1)) - radius).astype(np.float32)
    colours = np.empty((len(vertices), 3), dtype=np.float32)
    for start in range(0, len(vertices), _POINT_CHUNK):
        x = torch.from_numpy(vertices[start : start + _POINT_CHUNK]).to(device)
        rgb = field(x, torch.full((len(x),), time, device=device)).rgb
        colours[start : start + len(x)] = rgb.float().cpu().numpy()
    return Mesh(vertices=vertices, faces=faces.astype(np.int64).reshape(-1, 3), colours=colours)


def export_meshes(
    directory: Path,
    field: DynamicNeRFField,
    times: Sequence[float],
    *,
    resolution: int,
    threshold: float,
    formats: Sequence[Literal["obj", "glb"]],
) -> MeshSequence:
    """Extract and write one mesh per timestamp in each format (`MESH_TEMPLATES`); returns the manifest record."""
    directory = Path(directory)
    templates = {fmt: MESH_TEMPLATES[fmt] for fmt in dict.fromkeys(formats)}
    num_vertices, num_faces = [], []
    for frame, time in enumerate(times):
        mesh = extract_mesh(field, float(time), resolution=resolution, threshold=threshold)
        if len(mesh.vertices) == 0:
            log.warning("frame %d: the density never reaches %g: its mesh is empty", frame, threshold)
        for fmt, template in templates.items():
            path = directory / template.format(frame=frame)
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "obj":
                write_obj(path, mesh, comment=f"fourd distill: frame {frame}, t = {time:g}, density {threshold:g}")
            else:
                write_glb(path, mesh)
        num_vertices.append(len(mesh.vertices))
        num_faces.append(len(mesh.faces))
    return MeshSequence(
        templates=templates,
        num_frames=len(times),
        threshold=threshold,
        resolution=resolution,
        num_vertices=num_vertices,
        num_faces=num_faces,
    )


def write_obj(path: Path, mesh: Mesh, *, comment: str = "") -> None:
    """Wavefront OBJ in `MESH_AXES` coordinates with per-vertex colours (`v x y z r g b`), 1-based faces."""
    vertices = mesh.vertices.astype(np.float64) @ MESH_AXES.T
    lines = [f"# {comment}"] if comment else []
    lines.append("# axes: X = world y, Y = world z (up), Z = world x (towards the input camera)")
    rows = np.concatenate([vertices, mesh.colours.astype(np.float64)], axis=1)
    lines += [f"v {a:.6f} {b:.6f} {c:.6f} {r:.5f} {g:.5f} {bl:.5f}" for a, b, c, r, g, bl in rows.tolist()]
    lines += [f"f {a} {b} {c}" for a, b, c in (mesh.faces + 1).tolist()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def write_glb(path: Path, mesh: Mesh) -> None:
    """glTF 2.0 binary: one mesh (POSITION float32, COLOR_0 linear float32, uint32 indices), unlit material.

    An empty mesh is written as a scene without nodes (a valid glTF file).
    """
    gltf: dict = {"asset": {"version": "2.0", "generator": "fourd distill"}, "scene": 0, "scenes": [{"nodes": []}]}
    binary = b""
    if len(mesh.vertices) > 0:
        positions = (mesh.vertices.astype(np.float64) @ MESH_AXES.T).astype("<f4")
        colours = _srgb_to_linear(mesh.colours.astype(np.float64)).astype("<f4")
        indices = mesh.faces.astype("<u4").reshape(-1)
        blobs = [positions.tobytes(), colours.tobytes(), indices.tobytes()]  # each a multiple of 4 bytes
        offsets = np.cumsum([0] + [len(b) for b in blobs]).tolist()
        binary = b"".join(blobs)
        gltf.update(
            scenes=[{"nodes": [0]}],
            nodes=[{"mesh": 0}],
            meshes=[{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2, "material": 0}]}],
            materials=[
                {
                    "pbrMetallicRoughness": {
                        "baseColorFactor": [1, 1, 1, 1],
                        "metallicFactor": 0,
                        "roughnessFactor": 1,
                    },
                    "extensions": {"KHR_materials_unlit": {}},
                }
            ],
            extensionsUsed=["KHR_materials_unlit"],
            buffers=[{"byteLength": len(binary)}],
            bufferViews=[
                {"buffer": 0, "byteOffset": offsets[0], "byteLength": len(blobs[0]), "target": 34962},
                {"buffer": 0, "byteOffset": offsets[1], "byteLength": len(blobs[1]), "target": 34962},
                {"buffer": 0, "byteOffset": offsets[2], "byteLength": len(blobs[2]), "target": 34963},
            ],
            accessors=[
                {
                    "bufferView": 0,
                    "componentType": 5126,
                    "count": len(positions),
                    "type": "VEC3",
                    "min": positions.min(axis=0).tolist(),
                    "max": positions.max(axis=0).tolist(),
                },
                {"bufferView": 1, "componentType": 5126, "count": len(colours), "type": "VEC3"},
                {"bufferView": 2, "componentType": 5125, "count": len(indices), "type": "SCALAR"},
            ],
        )
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text
    if binary:
        chunks += struct.pack("<I4s", len(binary), b"BIN\0") + binary
    Path(path).write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks)


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (IEC 61966-2-1), for glTF's linear vertex colours."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
