"""The distill stage: mvgen anchor videos + the input video → a dynamic NeRF and its renders (spec §4–5)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stages.common.artifacts import (
    CONFIG_FILE,
    DistillManifest,
    MvgenManifest,
    PreprocessManifest,
    ViewSet,
    git_sha,
    staged_output_dir,
)
from stages.common.cameras import OrbitCamera, load_cameras, save_cameras
from stages.common.config import config_sha256, dump_config
from stages.common.devices import resolve_device
from stages.common.errors import StageError
from stages.common.fingerprint import inputs_sha256
from stages.common.image_io import VIEW_FRAME_TEMPLATE, composite_on_white, read_rgba, write_preview_video, write_rgba
from stages.common.logs import progress
from stages.common.seeding import deterministic_algorithms, make_generator, seed_everything
from stages.common.tracking import stage_run
from stages.distill.config import DistillConfig
from stages.distill.export import export_meshes, orbit_trajectory, render_rgba, require_mesh_libraries, save_field
from stages.distill.gaussians import GaussianTrainer, save_gaussians
from stages.distill.guidance import FourDMGuidance
from stages.distill.losses import anchor_target, load_anchor_lpips
from stages.distill.trainer import AnchorTarget, Trainer, build_field, field_kwargs
from stages.mvgen import load_fourdm

__all__ = ["run", "write_train_log", "EVAL_AZIMUTHS_DEG"]

log = logging.getLogger(__name__)

EVAL_AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)
"""The 4 orthogonal cameras the eval stage scores (spec §6.2), elevation 0."""
ORBIT_DIR = "renders/orbit"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run(
    config: DistillConfig,
    *,
    input_dir: Path,
    preprocess_dir: Path,
    weights_dir: Path,
    lpips_dir: Path,
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[Trainer | GaussianTrainer], None] | None = None,
) -> DistillManifest:
    """Optimise the dynamic NeRF of one subject and render it; writes manifest.json last.

    Args:
        input_dir: mvgen artifact (the anchor videos and their cameras).
        preprocess_dir: the preprocess artifact mvgen was sampled from (input frames for 4DM's conditioning).
        weights_dir: converted 4DM folder, e.g. weights/fourdm.
        lpips_dir: folder with `vgg16-397923af.pth` and `vgg.pth` (LPIPS-VGG of the anchor loss).
        output_dir: artifact folder; replaced as a whole only when the stage succeeds.
        checkpoint_dir: folder for resumable checkpoints; a rerun with the same folder, config and inputs resumes
            there (a checkpoint of another config or other inputs is replaced).
        on_step: called with the trainer after every optimisation step (benchmarks/distill_quality.py watches the
            field converge through it).

    Raises:
        StageError: unusable or mismatched inputs, missing weights.
    """
    # 1. Inputs, checked against each other.
    mvgen = MvgenManifest.load(input_dir)
    source = PreprocessManifest.load(preprocess_dir)
    if mvgen.upstream.get("preprocess") != source.sha256(preprocess_dir):
        raise StageError(f"{input_dir} was not sampled from {preprocess_dir} (preprocess manifest hash differs)")
    views = mvgen.views
    for v in (config.cameras.anchor_view, *config.cameras.extra_anchor_views):
        if v >= views.num_views:
            raise StageError(f"anchor view {v} (cameras.anchor_view/extra_anchor_views): mvgen has {views.num_views}")
    mv_cameras = load_cameras(input_dir / views.cameras_file)
    front = mv_cameras[config.cameras.anchor_view]
    if config.cameras.anchor_source == "input" and (abs(front.azimuth_deg) > 1e-6 or abs(front.elevation_deg) > 1e-6):
        raise StageError(
            f"cameras.anchor_source input needs the anchor view at the input camera (azimuth 0, elevation 0); mvgen "
            f"view {front.view} is at azimuth {front.azimuth_deg:g}, elevation {front.elevation_deg:g}"
        )
    device = resolve_device(config.device)
    if config.mesh.enabled:
        require_mesh_libraries()  # before the optimisation, not after it
    seed_everything(config.seed)
    prompt = mvgen.prompt or source.prompt or config.guidance.fallback_prompt

    # 2. Frozen networks: 4DM for SDS, LPIPS-VGG for the anchor loss.
    w = config.loss_weights
    guidance = conditioning = lpips = None
    inputs = [read_rgba(p) for p in source.frame_paths(preprocess_dir)]  # uint8 (H, W, 4), mvgen's size and frames
    frames = np.stack([composite_on_white(rgba) for rgba in inputs])  # (F, H, W, 3)
    if w.sds > 0:
        pipe = load_fourdm(weights_dir, torch_dtype=_DTYPES[config.guidance.dtype]).to(device)
        guidance = FourDMGuidance(
            pipe, guidance_scale=config.guidance.guidance_scale, std_rescale=config.guidance.std_rescale
        )
        if frames.shape[1] != guidance.image_size:
            raise StageError(f"input frames are {frames.shape[1]} px but this 4DM works at {guidance.image_size} px")
        conditioning = guidance.prepare(
            frames, prompt, config.guidance.negative_prompt, make_generator(config.seed, device)
        )
    if w.anchor_lpips > 0:
        lpips = load_anchor_lpips(lpips_dir).to(device)

    # 3. The anchor video: the mvgen view at the input camera (spec §5.2; ours: or the input video itself), binary
    # mask (alpha > 0.5) on white, and the extra anchor views (ours, off by default) the same way.
    def anchor_video(view: int) -> torch.Tensor:
        """(F, 4, H, W): the anchor target (`losses.anchor_target`) and the binary mask of one mvgen view."""
        return torch.stack(
            [_anchor_frame(read_rgba(views.frame_path(input_dir, view, f))) for f in range(views.num_frames)]
        )

    anchor_views = [config.cameras.anchor_view, *config.cameras.extra_anchor_views]
    if config.cameras.anchor_source == "input":  # ours: the input video is the anchor video at its camera
        first = torch.stack([_anchor_frame(rgba) for rgba in inputs])
    else:
        first = anchor_video(anchor_views[0])
    videos = torch.stack([first, *(anchor_video(v) for v in anchor_views[1:])])  # (A, F, 4, H, W)
    anchor = AnchorTarget(
        frames=videos[0, :, :3].contiguous(),
        camera=mv_cameras[anchor_views[0]],
        extra_frames=videos[1:, :, :3].contiguous() if len(anchor_views) > 1 else None,
        extra_cameras=[mv_cameras[v] for v in anchor_views[1:]],
        masks=videos[:, :, 3:].contiguous(),
    )

    torch.manual_seed(config.seed)
    frozen = dict(guidance=guidance, conditioning=conditioning, lpips=lpips, device=device)
    gaussians = config.field.representation == "gaussians"
    trainer: Trainer | GaussianTrainer
    if gaussians:  # ours: 4D Gaussians (stages/distill/gaussians/)
        trainer = GaussianTrainer(config, anchor, **frozen)
    else:
        trainer = Trainer(config, build_field(config).to(device), anchor, **frozen)
    # Deterministic kernels (when asked) cover the optimisation and the renders, where scatter-adds live.
    with (
        deterministic_algorithms(config.deterministic),
        stage_run(
            "distill", config, subject=mvgen.subject, extra_tags={"hash_backend": config.field.backend}
        ) as tracker,
    ):
        # 4. Optimise (resuming from checkpoint_dir when it holds a checkpoint).
        log.info(
            "distill %s: %d steps, %d frames, prompt %r, on %s",
            mvgen.subject,
            config.num_steps,
            views.num_frames,
            prompt,
            device,
        )

        def validate(step: int) -> None:
            if tracker.run_id is None:
                return
            strip = np.concatenate(
                [
                    composite_on_white(_render(trainer, cam, views.num_frames // 2, anchor.frames.shape[-1]))
                    for cam in _eval_cameras(config)
                ],
                axis=1,
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"step_{step:06d}.png"
                write_rgba(path, np.dstack([strip, np.full(strip.shape[:2], 255, np.uint8)]))
                tracker.log_artifact(path, "validation")

        train_log: list[dict[str, float]] = []

        def on_metrics(step: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics(metrics, step=step)
            train_log.append({"step": step, **metrics})

        final = trainer.fit(
            config.num_steps,
            checkpoint_dir=checkpoint_dir,
            inputs_sha256=_inputs_sha256(config, input_dir, preprocess_dir, weights_dir, lpips_dir)
            if checkpoint_dir is not None
            else "",
            on_metrics=on_metrics,
            on_validate=validate,
            on_step=on_step,
        )

        # 5. Renders, exports, config; manifest last.
        size = config.output_size_px
        cameras = _eval_cameras(config)
        renders = ViewSet(
            num_views=len(cameras),
            num_frames=views.num_frames,
            size_px=size,
            frame_template=f"{ORBIT_DIR}/{VIEW_FRAME_TEMPLATE}",
            cameras_file=f"{ORBIT_DIR}/cameras.json",
            source_indices=views.source_indices,
        )
        input_camera = OrbitCamera.from_angles(0, 0.0, 0.0, config.cameras.radius, config.cameras.fov_y_deg)
        manifest_fields = DistillManifest.model_fields
        with staged_output_dir(output_dir) as tmp:
            dump_config(config, tmp / CONFIG_FILE)
            if isinstance(trainer, GaussianTrainer):
                names = (manifest_fields["field_file"].default, manifest_fields["field_config_file"].default)
                saved = save_gaussians(tmp, trainer.field, *names)
            else:
                saved = save_field(tmp, trainer.field, field_kwargs(config), trainer.occupancy)
            files = [CONFIG_FILE, *saved]
            train_log_file = manifest_fields["train_log_file"].default
            write_train_log(tmp / train_log_file, train_log)
            files.append(train_log_file)
            jobs = [(cam, f) for cam in cameras for f in range(views.num_frames)]
            for cam, f in progress(jobs, desc="distill renders", unit="frame"):
                write_rgba(renders.frame_path(tmp, cam.view, f), _render(trainer, cam, f, size))
            (tmp / ORBIT_DIR).mkdir(parents=True, exist_ok=True)
            save_cameras(tmp / renders.cameras_file, cameras)
            files += renders.file_list()
            input_template = manifest_fields["input_view_template"].default
            metrics = dict(final)
            input_renders, anchor_renders = [], []
            for f in progress(range(views.num_frames), desc="distill input and anchor views", unit="frame"):
                image = _render(trainer, input_camera, f, source.size_px)
                write_rgba(tmp / input_template.format(frame=f), image)
                files.append(input_template.format(frame=f))
                input_renders.append(composite_on_white(image))
                anchor_renders.append(composite_on_white(_render(trainer, anchor.camera, f, anchor.frames.shape[-1])))
            metrics["psnr/input_view"] = _psnr(np.stack(input_renders), frames)
            anchor_truth = (anchor.frames.permute(0, 2, 3, 1).numpy() * 255).round()
            metrics["psnr/anchor"] = _psnr(np.stack(anchor_renders), anchor_truth)
            preview = [
                composite_on_white(
                    _render(
                        trainer,
                        OrbitCamera.from_angles(0, az, 0.0, config.cameras.radius, config.cameras.fov_y_deg),
                        f,
                        size,
                    )
                )
                for az, f in progress(
                    orbit_trajectory(views.num_frames, config.preview_segments), desc="distill preview", unit="frame"
                )
            ]
            preview_file = manifest_fields["preview_file"].default
            write_preview_video(tmp / preview_file, preview, mvgen.fps or 8.0)
            files.append(preview_file)
            meshes = None
            if config.mesh.enabled and isinstance(trainer, Trainer):  # the config refuses meshes of Gaussians
                meshes = export_meshes(
                    tmp,
                    trainer.field,
                    [float(t) for t in trainer.times],
                    resolution=config.mesh.resolution,
                    threshold=config.mesh.threshold,
                    formats=config.mesh.formats,
                )
                files += meshes.file_list()
            manifest = DistillManifest(
                subject=mvgen.subject,
                files=files,
                config_sha256=config_sha256(config),
                code_version=git_sha(),
                upstream={"mvgen": mvgen.sha256(input_dir), "preprocess": source.sha256(preprocess_dir)},
                renders=renders,
                hash_backend=config.field.backend,
                representation=config.field.representation,
                occupancy_file=None if gaussians else manifest_fields["occupancy_file"].default,
                num_steps=trainer.step,
                prompt=prompt,
                fps=mvgen.fps,
                metrics=metrics,
                meshes=meshes,
            )
            manifest.write(tmp)
        tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith("psnr/")}, step=trainer.step)
        tracker.log_manifest(output_dir)
        tracker.log_artifact(output_dir / manifest.preview_file)  # the orbit video
        log.info(
            "wrote %d views × %d frames of renders to %s (PSNR input view %.2f dB)",
            len(cameras),
            views.num_frames,
            output_dir,
            metrics["psnr/input_view"],
        )
        return manifest


def write_train_log(path: Path, records: list[dict[str, float]]) -> None:
    """The losses of every logged step as JSON lines (`{"step": …, "loss/total": …, …}`), for people and the eval
    report's loss curves. A resumed run logs the steps before its checkpoint too (the checkpoint carries them)."""
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")


def _anchor_frame(rgba: np.ndarray) -> torch.Tensor:
    """(4, H, W): the anchor target (`losses.anchor_target`) of a uint8 RGBA frame and its binary mask (α > 0.5)."""
    mask = torch.from_numpy(rgba[..., 3:].astype(np.float32) / 255.0 > 0.5).float().permute(2, 0, 1)
    return torch.cat([anchor_target(rgba), mask])


def _inputs_sha256(config: DistillConfig, *dirs: Path) -> str:
    """Content hash of what the run reads: the two artifacts, and the 4DM and LPIPS folders when their loss is on."""
    input_dir, preprocess_dir, weights_dir, lpips_dir = dirs
    w = config.loss_weights
    used = [
        input_dir,
        preprocess_dir,
        *([weights_dir] if w.sds > 0 else []),
        *([lpips_dir] if w.anchor_lpips > 0 else []),
    ]
    return inputs_sha256(used)


def _eval_cameras(config: DistillConfig) -> list[OrbitCamera]:
    return [
        OrbitCamera.from_angles(v, a, 0.0, config.cameras.radius, config.cameras.fov_y_deg)
        for v, a in enumerate(EVAL_AZIMUTHS_DEG)
    ]


def _render(trainer: Trainer | GaussianTrainer, camera: OrbitCamera, frame: int, size: int) -> np.ndarray:
    if isinstance(trainer, GaussianTrainer):
        return trainer.render_rgba(camera, float(trainer.times[frame]), size)
    r = trainer.config.renderer
    return render_rgba(
        trainer.field,
        trainer.occupancy,
        camera,
        float(trainer.times[frame]),
        size,
        step_size=trainer.step_size,
        alpha_threshold=r.alpha_threshold,
        early_stop_eps=r.early_stop_eps,
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of uint8-range images; 100 when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))
