"""Tiny glTF 2.0 assets written from scratch, so render tests know every vertex and keyframe exactly.

A box (flat-shaded, 24 vertices) on one node, optionally animated by a LINEAR translation track. Written as
`.gltf` with its buffer inlined as a data URI; no Blender involved, so the tests check Blender's importer and
our conventions against an independent definition.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_box_gltf", "box_corners", "gltf_to_blender", "translation_at"]

Vec3 = tuple[float, float, float]


def box_corners(half: Vec3) -> np.ndarray:
    """(8, 3) corners of an axis-aligned box centred at the origin, glTF coordinates."""
    return np.array(list(itertools.product(*[(-h, h) for h in half])), dtype=np.float64)


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
    """glTF (+Y up, +Z forward) → Blender's import world (+Z up, −Y forward): (x, y, z) → (x, −z, y)."""
    return np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1)


def translation_at(keyframes: Sequence[tuple[float, Vec3]], t: float) -> np.ndarray:
    """Linearly interpolated translation at time t (clamped), as glTF LINEAR sampling."""
    times = [k[0] for k in keyframes]
    values = np.array([k[1] for k in keyframes], dtype=np.float64)
    return np.array([np.interp(t, times, values[:, i]) for i in range(3)])


def _box_mesh(half: Vec3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    positions, normals, indices = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u, v = [a for a in range(3) if a != axis]
            quad = []
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = [0.0, 0.0, 0.0]
                p[axis], p[u], p[v] = sign * half[axis], du * half[u], dv * half[v]
                quad.append(p)
            n = [0.0, 0.0, 0.0]
            n[axis] = sign
            base = len(positions)
            positions += quad
            normals += [n] * 4
            # Winding is not made consistent: Cycles renders both sides of a face.
            indices += [base + i for t in ((0, 1, 2), (0, 2, 3)) for i in t]
    return (
        np.array(positions, dtype=np.float32),
        np.array(normals, dtype=np.float32),
        np.array(indices, dtype=np.uint16),
    )


def write_box_gltf(
    path: Path,
    *,
    half: Vec3 = (0.2, 0.3, 0.1),
    color: tuple[float, float, float, float] = (0.9, 0.35, 0.1, 1.0),
    keyframes: Sequence[tuple[float, Vec3]] | None = None,
) -> Path:
    """Write a box `.gltf`; with `keyframes` [(time_s, translation), ...] its node moves (clip "move")."""
    pos, nrm, idx = _box_mesh(half)
    chunks: list[bytes] = []
    views, accessors = [], []

    def add(data: bytes, accessor: dict, target: int | None = None) -> int:
        offset = sum(len(c) for c in chunks)
        chunks.append(data + b"\0" * (-len(data) % 4))
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        accessors.append({"bufferView": len(views) - 1, **accessor})
        return len(accessors) - 1

    a_pos = add(
        pos.tobytes(),
        {
            "componentType": 5126,
            "count": len(pos),
            "type": "VEC3",
            "min": pos.min(0).tolist(),
            "max": pos.max(0).tolist(),
        },
        34962,
    )
    a_nrm = add(nrm.tobytes(), {"componentType": 5126, "count": len(nrm), "type": "VEC3"}, 34962)
    a_idx = add(idx.tobytes(), {"componentType": 5123, "count": len(idx), "type": "SCALAR"}, 34963)
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "fourd tests"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"name": "box", "mesh": 0}],
        "meshes": [
            {
                "name": "box",
                "primitives": [{"attributes": {"POSITION": a_pos, "NORMAL": a_nrm}, "indices": a_idx, "material": 0}],
            }
        ],
        "materials": [
            {
                "name": "paint",
                "pbrMetallicRoughness": {
                    "baseColorFactor": list(color),
                    "metallicFactor": 0.0,
                    "roughnessFactor": 0.8,
                },
            }
        ],
    }
    if keyframes:
        times = np.array([k[0] for k in keyframes], dtype=np.float32)
        values = np.array([k[1] for k in keyframes], dtype=np.float32)
        gltf["nodes"][0]["translation"] = values[0].tolist()
        a_t = add(
            times.tobytes(),
            {
                "componentType": 5126,
                "count": len(times),
                "type": "SCALAR",
                "min": [float(times.min())],
                "max": [float(times.max())],
            },
        )
        a_v = add(values.tobytes(), {"componentType": 5126, "count": len(values), "type": "VEC3"})
        gltf["animations"] = [
            {
                "name": "move",
                "samplers": [{"input": a_t, "output": a_v, "interpolation": "LINEAR"}],
                "channels": [{"sampler": 0, "target": {"node": 0, "path": "translation"}}],
            }
        ]
    blob = b"".join(chunks)
    gltf["buffers"] = [
        {"byteLength": len(blob), "uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode()}
    ]
    gltf["bufferViews"] = views
    gltf["accessors"] = accessors
    path = Path(path)
    path.write_text(json.dumps(gltf), encoding="utf-8")
    return path
