"""Exports of a trained field: the weights with their constructor arguments, renders at fixed cameras, a preview.

`field.safetensors` is the `DynamicNeRFField` state dict and `field_config.json` its constructor keyword arguments
(as diffusers' `save_pretrained` does), so `load_field(dir)` rebuilds it with either hash grid backend;
`occupancy.safetensors` holds the occupancy grid the renders used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stages.common.cameras import OrbitCamera
from stages.distill.cameras import camera_rays
from stages.distill.fields import DynamicNeRFField
from stages.distill.renderer import OccupancyGrid, render_rays

__all__ = ["save_field", "load_field", "render_rgba", "orbit_trajectory", "FIELD_FILE", "FIELD_CONFIG_FILE"]

FIELD_FILE = "field.safetensors"
FIELD_CONFIG_FILE = "field_config.json"
OCCUPANCY_FILE = "occupancy.safetensors"


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
