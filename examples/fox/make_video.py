"""Render one animation clip of a glTF asset to a small H.264 mp4 with Blender's `bpy`.

Example:  python make_video.py --asset Fox.glb --clip Survey --output video.mp4
Needs `bpy` (4.5.x) and `av` (PyAV) from PyPI. Renders with Cycles on the CPU.
"""
import argparse
import math
import os
from fractions import Fraction

import av
from av.video.reformatter import ColorRange
import bpy
import numpy as np
from mathutils import Matrix, Vector

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--asset", required=True, help="path to a .glb/.gltf file")
p.add_argument("--clip", default="Survey", help="animation (action) name to render")
p.add_argument("--output", default="video.mp4", help="output mp4 path")
p.add_argument("--frames-dir", default=None, help="PNG folder (default: <output>_frames)")
p.add_argument("--size", type=int, nargs=2, default=(480, 360), metavar=("W", "H"))
p.add_argument("--fps", type=int, default=24)
p.add_argument("--frame-step", type=int, default=2, help="render every Nth clip frame")
p.add_argument("--max-frames", type=int, default=40, help="cap on rendered frames")
p.add_argument("--azimuth", type=float, default=0.0, help="camera azimuth, deg (0 = Blender -Y)")
p.add_argument("--fov", type=float, default=45.0, help="vertical field of view, deg")
p.add_argument("--fill", type=float, default=0.6, help="fraction of frame height the object spans")
p.add_argument("--background", type=float, nargs=3, default=(0.36, 0.45, 0.56), metavar=("R", "G", "B"),
               help="plain backdrop colour, sRGB in [0, 1]")
p.add_argument("--samples", type=int, default=16)
p.add_argument("--crf", type=int, default=23)
p.add_argument("--comment", default="Fox.glb: mesh CC0 PixelMannen; rigging/animation CC-BY 4.0 "
               "@tomkranis; glTF conversion @AsoboStudio, @scurest", help="mp4 comment tag")
args = p.parse_args()
W, H = args.size
frames_dir = os.path.abspath(args.frames_dir or os.path.splitext(args.output)[0] + "_frames")
os.makedirs(frames_dir, exist_ok=True)

# --- Scene and asset ------------------------------------------------------
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=os.path.abspath(args.asset))
scene = bpy.context.scene
arm = next(o for o in scene.objects if o.type == "ARMATURE")

# The importer adds a helper "Icosphere" mesh used as the bones' display shape; drop it.
for pb in arm.pose.bones:
    if pb.custom_shape is not None and pb.custom_shape.name in bpy.data.objects:
        bpy.data.objects.remove(pb.custom_shape)
meshes = [o for o in scene.objects if o.type == "MESH"]

# Select the clip: one action per glTF animation. Remove the importer's NLA tracks so
# that only the chosen action plays, then use that action's frame range.
action = bpy.data.actions[args.clip]
anim = arm.animation_data or arm.animation_data_create()
for track in list(anim.nla_tracks):
    anim.nla_tracks.remove(track)
anim.action = action
if hasattr(anim, "action_slot") and anim.action_slot is None and len(action.slots):
    anim.action_slot = action.slots[0]          # Blender >= 4.4 "slotted" actions
f0, f1 = (int(round(f)) for f in action.frame_range)
frames = list(range(f0, f1 + 1, args.frame_step))[: args.max_frames]
scene.frame_start, scene.frame_end = frames[0], frames[-1]
scene.render.fps = args.fps


def world_vertices(ob, dg):
    """Skinned (evaluated) vertices of one mesh object in world space, as an (N, 3) array."""
    ev = ob.evaluated_get(dg)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3)
    me.vertices.foreach_get("co", co)
    m = np.array(ev.matrix_world)
    ev.to_mesh_clear()
    return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]


# --- Normalise: world bounding box over all clip frames fits the unit sphere -------
pts = []
for f in range(f0, f1 + 1):                       # every clip frame, not only rendered ones
    scene.frame_set(f)
    dg = bpy.context.evaluated_depsgraph_get()
    pts += [world_vertices(ob, dg) for ob in meshes]
pts = np.concatenate(pts)
lo, hi = pts.min(0), pts.max(0)
centre, radius = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2
s = 1.0 / radius
arm.matrix_world = Matrix.Scale(s, 4) @ Matrix.Translation(Vector(-centre)) @ arm.matrix_world
pts = (pts - centre) * s                          # same points, normalised
print(f"bbox size {hi - lo}, scale {s:.5f}")

# --- Camera: elevation 0, looking at the origin; distance so object spans `fill` ---
az = math.radians(args.azimuth)
view_dir = Vector((math.sin(az), -math.cos(az), 0.0))   # unit vector origin -> camera
rot = (-view_dir).to_track_quat("-Z", "Y").to_matrix()  # camera looks down its -Z
R = np.array(rot)
tan_half = math.tan(math.radians(args.fov) / 2)
aspect = W / H


def spans(d):
    """Fraction of frame height and width covered by all points, camera at distance d."""
    c = (pts - np.array(view_dir) * d) @ R                # camera coordinates
    depth = -c[:, 2]
    y = c[:, 1] / (depth * tan_half)
    x = c[:, 0] / (depth * tan_half * aspect)
    return (y.max() - y.min()) / 2, (x.max() - x.min()) / 2


lo_d, d = 1.05, 100.0                             # bisection: spans shrink as d grows
for _ in range(60):
    mid = (lo_d + d) / 2
    fy, fx = spans(mid)
    lo_d, d = (mid, d) if (fy > args.fill or fx > 0.9) else (lo_d, mid)
print(f"camera distance {d:.3f}, spans (h, w) = {spans(d)}")
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
cam.data.sensor_fit, cam.data.angle_y = "VERTICAL", math.radians(args.fov)
cam.matrix_world = Matrix.Translation(view_dir * d) @ rot.to_4x4()
scene.collection.objects.link(cam)
scene.camera = cam

# --- Lighting: one soft sun plus uniform ambient; camera rays see a flat backdrop --------
sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
sun.data.energy, sun.data.angle = 3.0, math.radians(20)
sun_dir = Vector((math.sin(az + 0.6), -math.cos(az + 0.6), 0.8)).normalized()
sun.rotation_euler = sun_dir.to_track_quat("Z", "Y").to_euler()   # light travels -Z
scene.collection.objects.link(sun)

scene.world = bpy.data.worlds.new("World")
scene.world.use_nodes = True
nt = scene.world.node_tree
ambient = nt.nodes["Background"]                  # white, strength 0.6: light on the object
ambient.inputs["Color"].default_value, ambient.inputs["Strength"].default_value = (1,) * 4, 0.6
backdrop = nt.nodes.new("ShaderNodeBackground")    # plain --background colour (Standard view keeps it)
backdrop.inputs["Color"].default_value = (*[c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
                                          for c in args.background], 1)  # sRGB -> linear
mix = nt.nodes.new("ShaderNodeMixShader")          # camera rays see the backdrop, others ambient
nt.links.new(nt.nodes.new("ShaderNodeLightPath").outputs["Is Camera Ray"], mix.inputs[0])
nt.links.new(ambient.outputs[0], mix.inputs[1])
nt.links.new(backdrop.outputs[0], mix.inputs[2])
nt.links.new(mix.outputs[0], nt.nodes["World Output"].inputs["Surface"])

# --- Render settings and frame loop -----------------------------------------------
r = scene.render
r.engine, scene.cycles.device = "CYCLES", "CPU"
scene.cycles.samples, scene.cycles.use_denoising, scene.cycles.seed = args.samples, False, 0
r.resolution_x, r.resolution_y, r.resolution_percentage = W, H, 100
r.film_transparent = False
r.image_settings.file_format, r.image_settings.color_mode = "PNG", "RGB"
scene.view_settings.view_transform = "Standard"   # no AgX tone mapping: the backdrop keeps its colour

paths = [os.path.join(frames_dir, f"frame_{i:04d}.png") for i in range(len(frames))]
for f, path in zip(frames, paths):
    scene.frame_set(f)
    r.filepath = path
    bpy.ops.render.render(write_still=True)

# --- Encode PNGs to H.264 / yuv420p mp4 with PyAV ------------------------------------
with av.open(args.output, "w") as out:
    out.metadata["comment"] = args.comment
    st = out.add_stream("libx264", rate=args.fps, options={"crf": str(args.crf)})
    st.width, st.height, st.pix_fmt = W, H, "yuv420p"
    st.codec_context.time_base = Fraction(1, args.fps)
    for i, fp in enumerate(paths):
        with av.open(fp) as img:                  # PNG decodes as full-range RGB; convert to
            frame = next(img.decode(video=0)).reformat(  # the limited (TV) range players expect
                format="yuv420p", src_color_range=ColorRange.JPEG, dst_color_range=ColorRange.MPEG)
        frame.pts, frame.time_base = i, Fraction(1, args.fps)
        out.mux(st.encode(frame))
    out.mux(st.encode())
print(f"wrote {args.output}: {len(paths)} frames")
