"""The mvgen stage: a preprocess artifact → 4DM anchor videos, 4 orthogonal views × F frames (spec §1.1 stage B)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from stages.common.artifacts import CONFIG_FILE, MvgenManifest, PreprocessManifest, ViewSet, git_sha, staged_output_dir
from stages.common.cameras import OrbitCamera, save_cameras
from stages.common.config import config_sha256, dump_config
from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.common.image_io import VIEW_FRAME_TEMPLATE, composite_on_white, read_rgba, write_preview_video, write_rgba
from stages.common.logs import progress
from stages.common.seeding import make_generator, seed_everything
from stages.common.tracking import stage_run
from stages.mvgen.alpha import alpha_from_white
from stages.mvgen.config import MvgenConfig
from stages.mvgen.pipeline_fourdm import load_fourdm

__all__ = ["run", "AZIMUTHS_DEG", "view_azimuths_deg"]

log = logging.getLogger(__name__)

AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)
"""4DM's views in our convention: front (the input view), left, back, right (spec §1.3)."""


def view_azimuths_deg(config: MvgenConfig) -> list[float]:
    """Every written view's azimuth, in view order: AZIMUTHS_DEG turned by each of `azimuth_offsets_deg` in turn."""
    return [(offset + a) % 360.0 for offset in config.azimuth_offsets_deg for a in AZIMUTHS_DEG]


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run(config: MvgenConfig, *, input_dir: Path, weights_dir: Path, output_dir: Path) -> MvgenManifest:
    """Sample 4DM anchor videos for one preprocessed subject; writes manifest.json last.

    Args:
        input_dir: preprocess artifact (RGBA frames + manifest).
        weights_dir: converted 4DM folder (`python -m stages.mvgen.conversion`), e.g. weights/fourdm.
        output_dir: artifact folder; replaced as a whole only when the stage succeeds.

    Raises:
        StageError: unusable input artifact, missing/corrupt weights, or frames the model cannot take.
    """
    source = PreprocessManifest.load(input_dir)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    pipe = load_fourdm(weights_dir, torch_dtype=_DTYPES[config.dtype]).to(device)
    if config.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)

    # 1. Inputs: the kept frames composited on white (spec §1.2), at the model's resolution.
    frames = np.stack([composite_on_white(read_rgba(p)) for p in source.frame_paths(input_dir)])  # (F, H, W, 3)
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    expected = pipe.unet.config.sample_size * vae_factor
    if frames.shape[1] != expected:
        raise StageError(
            f"frames are {frames.shape[1]} px but this 4DM works at {expected} px: rerun preprocess "
            f"with size_px={expected}"
        )
    if config.window_frames > pipe.unet.config.motion_max_len:
        raise StageError(
            f"window_frames={config.window_frames} exceeds the motion modules' {pipe.unet.config.motion_max_len} "
            "positions (the paper uses 8)"
        )
    prompt = source.prompt or config.fallback_prompt
    azimuths = view_azimuths_deg(config)

    with stage_run("mvgen", config, subject=source.subject) as tracker:
        # 2. Sample each set's 4 views × frames jointly; every set from the same seed (the paper's one set is the
        # first).
        log.info(
            "4DM: %d frames × %d views (azimuth offsets %s), %d steps, CFG %.1f, %s on %s",
            source.num_frames,
            len(azimuths),
            ", ".join(f"{o:g}°" for o in config.azimuth_offsets_deg),
            config.num_inference_steps,
            config.guidance_scale,
            config.dtype,
            device,
        )
        images = []
        for k, offset in enumerate(config.azimuth_offsets_deg):
            sets = f" {k + 1}/{len(config.azimuth_offsets_deg)}" if len(config.azimuth_offsets_deg) > 1 else ""
            out = pipe(
                frames,
                prompt,
                negative_prompt=config.negative_prompt,
                azimuths_deg=[offset + a for a in AZIMUTHS_DEG],
                elevation_deg=config.elevation_deg,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                window_frames=config.window_frames,
                generator=make_generator(config.seed, device),
                progress=lambda it, sets=sets: progress(it, desc=f"4DM sampling{sets}"),
            )
            images.append(out.images)
        images = np.concatenate(images)  # (V, F, H, W, 3), the sets one after the other

        # 3. Write config, views, cameras and previews; manifest last.
        views = ViewSet(
            num_views=len(azimuths),
            num_frames=source.num_frames,
            size_px=frames.shape[1],
            frame_template=VIEW_FRAME_TEMPLATE,
            cameras_file="cameras.json",
            source_indices=source.source_indices,
        )
        cameras = [
            OrbitCamera.from_angles(v, a, config.elevation_deg, config.camera_radius, config.camera_fov_y_deg)
            for v, a in enumerate(azimuths)
        ]
        with staged_output_dir(output_dir) as tmp:
            dump_config(config, tmp / CONFIG_FILE)
            rgba = [
                [alpha_from_white(images[v, f], config.alpha_low, config.alpha_high) for f in range(source.num_frames)]
                for v in range(len(azimuths))
            ]
            for v, row in enumerate(rgba):
                for f, image in enumerate(row):
                    write_rgba(views.frame_path(tmp, v, f), image)
            save_cameras(tmp / views.cameras_file, cameras)
            grid = np.concatenate([np.concatenate([composite_on_white(i) for i in row], axis=1) for row in rgba], 0)
            write_rgba(tmp / "grid.png", np.dstack([grid, np.full(grid.shape[:2], 255, np.uint8)]))
            strips = [
                np.concatenate([composite_on_white(rgba[v][f]) for v in range(len(rgba))], axis=1)
                for f in range(source.num_frames)
            ]
            write_preview_video(tmp / "preview.mp4", strips, source.fps or 8.0)
            manifest = MvgenManifest(
                subject=source.subject,
                files=[CONFIG_FILE, *views.file_list(), "grid.png", "preview.mp4"],
                config_sha256=config_sha256(config),
                code_version=git_sha(),
                upstream={"preprocess": source.sha256(input_dir)},
                views=views,
                prompt=prompt,
                fps=source.fps,
            )
            manifest.write(tmp)
        tracker.log_manifest(output_dir)
        tracker.log_artifact(output_dir / "grid.png")
        tracker.log_artifact(output_dir / "preview.mp4")
        log.info("wrote %d views × %d frames to %s", len(azimuths), source.num_frames, output_dir)
        return manifest
