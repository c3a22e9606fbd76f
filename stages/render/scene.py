"""The Blender side of the render stage: import an asset, pick a clip, normalise it, light it, render a view.

Blender's `bpy` is one global scene per process; `BlenderScene` resets it to factory settings and owns it until
the next asset. Needs `bpy` (stages/render/requirements.txt); nothing else in the stage imports it.

Importer quirks handled here (found with Blender 4.5.15 on the assets of `../shared/assets`):
- the glTF importer adds an "Icosphere" mesh as the bones' display shape: it is removed with every other
  bone-shape object, and with the asset's own cameras and lights (we bring ours);
- each glTF animation becomes one action, laid out as NLA tracks on every object and shape-key block it drives;
  the tracks are removed and the chosen action is assigned directly with its slot (Blender ≥ 4.4 "slotted"
  actions), so exactly one clip plays;
- skinned and shape-key geometry is read from the evaluated depsgraph, so bounds follow the animation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from stages.common.errors import StageError
from stages.common.image_io import read_rgba
from stages.render.config import LightingConfig

__all__ = ["BlenderScene", "Clip", "blender_version"]

log = logging.getLogger(__name__)
logging.getLogger("glTFImporter").setLevel(logging.WARNING)  # one INFO line per node otherwise

_ENGINES = {"cycles": "CYCLES", "eevee": "BLENDER_EEVEE_NEXT"}


def blender_version() -> str:
    """`bpy.app.version_string`, e.g. `4.5.15 LTS`."""
    return bpy.app.version_string


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence Blender's C-level chatter on stdout (render progress, importer lines) at the file-descriptor level."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class Clip:
    """The animation clip that plays: its name (None for a static asset) and its range in Blender frames."""

    name: str | None
    first_frame: float
    last_frame: float
    frames_per_s: float
    """Blender frames per second of clip time (the scene rate the importer keyed the animation at)."""

    @property
    def duration_s(self) -> float:
        return (self.last_frame - self.first_frame) / self.frames_per_s


class BlenderScene:
    """One imported asset in a fresh Blender scene.

    Args:
        asset: path of a `.glb`/`.gltf`/`.fbx`/`.obj` file.

    Raises:
        StageError: unsupported format, or Blender cannot import the file, or it holds no mesh.
    """

    def __init__(self, asset: Path) -> None:
        asset = Path(asset)
        suffix = asset.suffix.lower()
        with _quiet_stdout():
            bpy.ops.wm.read_factory_settings(use_empty=True)
            try:
                match suffix:
                    case ".glb" | ".gltf":
                        bpy.ops.import_scene.gltf(filepath=str(asset.resolve()))
                    case ".fbx":
                        bpy.ops.import_scene.fbx(filepath=str(asset.resolve()))
                    case ".obj":
                        bpy.ops.wm.obj_import(filepath=str(asset.resolve()))
                    case _:
                        raise StageError(f"unsupported asset format {suffix!r}: {asset}")
            except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
                first = str(err).strip().splitlines()
                reason = first[-1] if first else type(err).__name__
                raise StageError(f"Blender could not import {asset}: {reason}") from None
        self.scene = bpy.context.scene
        self._drop_helpers()
        self.meshes = [o for o in self.scene.objects if o.type == "MESH" and not o.hide_render]
        if not self.meshes:
            raise StageError(f"{asset} holds no mesh to render")
        self.clips = self._clip_names()
        self.frames_per_s = self.scene.render.fps / self.scene.render.fps_base
        self._root: bpy.types.Object | None = None
        self._camera: bpy.types.Object | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="fourd-render-"))

    def _drop_helpers(self) -> None:
        shapes = {pb.custom_shape for o in self.scene.objects if o.type == "ARMATURE" for pb in o.pose.bones}
        for ob in list(self.scene.objects):
            if ob in shapes or ob.type in ("CAMERA", "LIGHT"):
                bpy.data.objects.remove(ob)

    def _animated_ids(self) -> list[bpy.types.ID]:
        ids: list[bpy.types.ID] = []
        for ob in self.scene.objects:
            ids.append(ob)
            keys = getattr(ob.data, "shape_keys", None)
            if keys is not None:
                ids.append(keys)
        return [i for i in ids if i.animation_data is not None]

    def _clip_names(self) -> list[str]:
        names = set()
        for idb in self._animated_ids():
            ad = idb.animation_data
            if ad.action is not None:
                names.add(ad.action.name)
            names |= {s.action.name for t in ad.nla_tracks for s in t.strips if s.action is not None}
        return sorted(names)

    def use_clip(self, name: str) -> Clip:
        """Make `name` the only clip that plays ("" = the first in alphabetical order); static assets get None.

        Raises:
            StageError: no clip of that name.
        """
        if not self.clips:
            return Clip(None, 0.0, 0.0, self.frames_per_s)
        name = name or self.clips[0]
        if name not in self.clips:
            raise StageError(f"no animation clip {name!r}; the asset has {self.clips}")
        action = bpy.data.actions[name]
        for idb in self._animated_ids():
            ad = idb.animation_data
            slot = None
            for track in ad.nla_tracks:
                for strip in track.strips:
                    if strip.action is action:
                        slot = strip.action_slot
            direct = ad.action is action
            if direct and slot is None:
                slot = ad.action_slot
            for track in list(ad.nla_tracks):
                ad.nla_tracks.remove(track)
            if slot is None and not direct:
                ad.action = None  # this object is not driven by the chosen clip
                continue
            ad.action = action
            if slot is not None:
                ad.action_slot = slot
        first, last = (float(f) for f in action.frame_range)
        return Clip(name, first, last, self.frames_per_s)

    def set_time(self, clip: Clip, t_s: float) -> None:
        """Pose the scene at clip time `t_s` seconds (sub-frame accurate)."""
        frame = clip.first_frame + t_s * clip.frames_per_s
        whole = math.floor(frame)
        self.scene.frame_set(int(whole), subframe=float(frame - whole))

    def world_points(self) -> np.ndarray:
        """(N, 3) float64 world positions of every rendered mesh vertex at the current time (evaluated)."""
        depsgraph = bpy.context.evaluated_depsgraph_get()
        out = []
        for ob in self.meshes:
            ev = ob.evaluated_get(depsgraph)
            mesh = ev.to_mesh()
            co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", co)
            m = np.array(ev.matrix_world, dtype=np.float64)
            ev.to_mesh_clear()
            out.append(co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3])
        return np.concatenate(out) if out else np.empty((0, 3))

    def set_world_transform(self, matrix: np.ndarray) -> None:
        """Apply a 4×4 map to the whole asset, under its own animation, by parenting its roots to one empty."""
        if self._root is None:
            self._root = bpy.data.objects.new("fourd_root", None)
            self.scene.collection.objects.link(self._root)
            for ob in list(self.scene.objects):
                if ob.parent is None and ob is not self._root:
                    ob.parent = self._root
                    ob.matrix_parent_inverse = Matrix.Identity(4)
        self._root.matrix_world = Matrix(np.asarray(matrix, dtype=np.float64).tolist())

    def setup_render(
        self, *, engine: str, samples: int, size_px: int, fov_y_deg: float, lighting: LightingConfig, seed: int
    ) -> None:
        """Camera intrinsics, lights, engine and colour settings shared by every view."""
        # 1. Camera: vertical FOV on a square sensor.
        cam = bpy.data.objects.new("fourd_camera", bpy.data.cameras.new("fourd_camera"))
        cam.data.sensor_fit = "VERTICAL"
        cam.data.angle_y = math.radians(fov_y_deg)
        cam.data.clip_start, cam.data.clip_end = 0.01, 100.0
        self.scene.collection.objects.link(cam)
        self.scene.camera = self._camera = cam

        # 2. Light: a uniform white environment (lights only: film is transparent) and one sun, fixed in the world.
        world = bpy.data.worlds.new("fourd_world")
        world.use_nodes = True
        bg = world.node_tree.nodes["Background"]
        bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        bg.inputs["Strength"].default_value = lighting.ambient_strength
        self.scene.world = world
        sun = bpy.data.objects.new("fourd_sun", bpy.data.lights.new("fourd_sun", "SUN"))
        sun.data.energy = lighting.sun_strength
        sun.data.angle = math.radians(lighting.sun_angle_deg)
        from stages.common.cameras import orbit_c2w

        # A light shines down its local −Z, as a camera looks: the orbit c2w at the sun's direction points it home.
        sun.matrix_world = Matrix(orbit_c2w(lighting.sun_azimuth_deg, lighting.sun_elevation_deg, 10.0).tolist())
        self.scene.collection.objects.link(sun)

        # 3. Engine, film and colour: transparent film (straight-alpha RGBA), Standard view (no tone mapping).
        r = self.scene.render
        r.engine = _ENGINES[engine]
        if engine == "cycles":
            self.scene.cycles.device = "CPU"
            self.scene.cycles.samples = samples
            self.scene.cycles.use_adaptive_sampling = False
            self.scene.cycles.use_denoising = False
            self.scene.cycles.seed = seed
        else:
            self.scene.eevee.taa_render_samples = samples
        r.resolution_x = r.resolution_y = size_px
        r.resolution_percentage = 100
        r.film_transparent = True
        r.dither_intensity = 0.0
        r.image_settings.file_format = "PNG"
        r.image_settings.color_mode = "RGBA"
        r.image_settings.color_depth = "8"
        self.scene.view_settings.view_transform = "Standard"
        self.scene.view_settings.look = "None"

    def render(self, c2w: np.ndarray) -> np.ndarray:
        """Render the current pose from an OpenGL camera-to-world matrix; uint8 (H, W, 4) straight-alpha RGBA.

        Blender cameras, like OpenGL's, look down local −Z with +Y up, and Blender's world is z-up like ours,
        so our c2w is the camera object's world matrix as it stands.
        """
        assert self._camera is not None, "setup_render first"
        self._camera.matrix_world = Matrix(np.asarray(c2w, dtype=np.float64).tolist())
        path = self._tmp / "frame.png"
        self.scene.render.filepath = str(path)
        with _quiet_stdout():
            bpy.ops.render.render(write_still=True)
        return read_rgba(path)

    def close(self) -> None:
        """Remove the scratch folder (the Blender scene is reset by the next `BlenderScene`)."""
        for p in self._tmp.glob("*"):
            p.unlink()
        self._tmp.rmdir()
