"""The reconstruction term (stages/distill/reconstruction.py) and the SDS start step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.cameras import OrbitCamera
from stages.distill.backprop import DeferredBackprop, DirectBackprop
from stages.distill.cameras import camera_rays
from stages.distill.guidance import FourDMGuidance, SDSOutput
from stages.distill.reconstruction import ReconstructionRays
from stages.distill.schedules import LinearSchedule
from stages.distill.trainer import AnchorTarget, Trainer, build_field
from tests.distill.test_trainer import TINY

CPU = torch.device("cpu")
CAMERAS = [OrbitCamera.from_angles(v, a, 0.0, 1.1, 45.0) for v, a in enumerate((0.0, 90.0, 180.0, 270.0))]


def coded_videos(num_frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, F, 3, H, W) whose channels spell (camera, frame, pixel) of each pixel, and masks spelling the frame."""
    cams, pixels = len(CAMERAS), size * size
    cam = torch.arange(cams).view(cams, 1, 1).expand(cams, num_frames, pixels)
    frame = torch.arange(num_frames).view(1, num_frames, 1).expand(cams, num_frames, pixels)
    pixel = torch.arange(pixels).view(1, 1, pixels).expand(cams, num_frames, pixels)
    videos = torch.stack([cam, frame, pixel], dim=2).float().reshape(cams, num_frames, 3, size, size)
    masks = (frame.float() / num_frames).reshape(cams, num_frames, 1, size, size)
    return videos, masks


def test_each_ray_carries_its_own_pixel_camera_time_and_mask():
    num_frames, size = 3, 5
    videos, masks = coded_videos(num_frames, size)
    times = torch.tensor([0.0, 0.25, 1.0])
    rays = ReconstructionRays(videos, masks, CAMERAS, times, CPU)
    assert len(rays) == len(CAMERAS) * num_frames * size * size
    batch = rays.sample(400, torch.Generator().manual_seed(0))
    cam, frame, pixel = batch.rgb.long().unbind(-1)
    assert len(set(zip(cam.tolist(), frame.tolist(), strict=True))) == len(CAMERAS) * num_frames  # all reached
    for k in range(len(cam)):
        expected = camera_rays(CAMERAS[cam[k]], size)
        assert torch.allclose(batch.rays.origins[k], expected.origins[pixel[k]])
        assert torch.allclose(batch.rays.directions[k], expected.directions[pixel[k]])
    assert torch.equal(batch.times, times[frame])
    assert torch.equal(batch.mask, frame.float() / num_frames)


def test_jittered_rays_pass_through_random_points_of_their_own_pixel():
    num_frames, size = 2, 4
    videos, masks = coded_videos(num_frames, size)
    rays = ReconstructionRays(videos, masks, CAMERAS, torch.tensor([0.0, 1.0]), CPU, jitter=True)
    batch = rays.sample(2000, torch.Generator().manual_seed(1))
    cam, _, pixel = batch.rgb.long().unbind(-1)
    inside = []
    for k in range(len(cam)):
        camera = CAMERAS[cam[k]]
        c2w = torch.tensor(camera.c2w, dtype=torch.float32)
        assert torch.allclose(batch.rays.origins[k], c2w[:3, 3])
        local = c2w[:3, :3].T @ batch.rays.directions[k]  # back into camera axes (OpenGL: looking down −z)
        focal = size / 2 / np.tan(np.radians(camera.fov_y_deg) / 2)
        x = float(local[0] / -local[2]) * focal + size / 2  # continuous pixel coordinates of the ray
        y = -float(local[1] / -local[2]) * focal + size / 2
        row, col = divmod(int(pixel[k]), size)
        inside.append((x - col, y - row))
    offsets = torch.tensor(inside)
    assert offsets.min() > -1e-4 and offsets.max() < 1 + 1e-4  # every ray stays within its own pixel
    assert offsets.min() < 0.02 and offsets.max() > 0.98  # and reaches across all of it, not just the centre
    assert offsets.std(0).sub(1 / 12**0.5).abs().max() < 0.02  # uniformly: the std of U(0, 1)


def test_rays_refuse_videos_that_do_not_match_their_cameras():
    videos, masks = coded_videos(2, 4)
    with pytest.raises(ValueError, match="cameras"):
        ReconstructionRays(videos[:3], masks[:3], CAMERAS, torch.tensor([0.0, 1.0]), CPU)
    with pytest.raises(ValueError, match="masks"):
        AnchorTarget(videos[0], CAMERAS[0], videos[1:], CAMERAS[1:], masks=masks[:2])


def sphere_videos(num_frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A known scene rendered exactly: a sphere of radius 0.25 at the origin moving along +z over time, red on the
    side facing azimuth 0 and blue elsewhere, (A, F, 3, H, W) on white and (A, F, 1, H, W) masks."""
    videos, masks = [], []
    for camera in CAMERAS:
        rays = camera_rays(camera, size)
        per_frame, per_mask = [], []
        for f in range(num_frames):
            centre = torch.tensor([0.0, 0.0, 0.1 * f / max(1, num_frames - 1)])
            oc = rays.origins - centre
            b = (oc * rays.directions).sum(-1)
            disc = b * b - (oc * oc).sum(-1) + 0.25**2
            hit = disc > 0
            t = -b - disc.clamp(min=0).sqrt()
            point = rays.origins + t[:, None] * rays.directions - centre
            colour = torch.where((point[:, :1] > 0), torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9]))
            image = torch.where(hit[:, None], colour, torch.ones(3))
            per_frame.append(image.T.reshape(3, size, size))
            per_mask.append(hit.float().reshape(1, size, size))
        videos.append(torch.stack(per_frame))
        masks.append(torch.stack(per_mask))
    return torch.stack(videos), torch.stack(masks)


def recon_config(steps: int, *, sds: float = 0.0, start_step: int = 0, chunk: int = 0):
    zero = LinearSchedule.constant(0.0)
    return TINY.model_copy(
        update={
            "num_steps": steps,
            "field": TINY.field.model_copy(
                update={"num_levels": 4, "base_resolution": 8, "log2_hashmap_size": 12, "hidden_dim": 16}
            ),
            "renderer": TINY.renderer.model_copy(update={"num_samples_per_ray": 64}),
            "runtime": TINY.runtime.model_copy(update={"grad_chunk_samples": chunk}),
            "guidance": TINY.guidance.model_copy(update={"start_step": start_step}),
            "optimizer": TINY.optimizer.model_copy(update={"grid_lr": 0.03, "mlp_lr": 0.01}),
            "reconstruction": TINY.reconstruction.model_copy(update={"rays_per_step": 1024}),
            "loss_weights": TINY.loss_weights.model_copy(
                update={
                    "sds": sds,
                    "anchor_lpips": 0.0,
                    "anchor_dssim": 0.0,
                    "orient": zero,
                    "sparsity": zero,
                    "opaque": zero,
                    "reconstruction_rgb": LinearSchedule.constant(1.0),
                    "reconstruction_mask": LinearSchedule.constant(0.1),
                }
            ),
        }
    )


def make_trainer(config, videos, masks, guidance=None) -> Trainer:
    anchor = AnchorTarget(videos[0], CAMERAS[0], videos[1:], CAMERAS[1:], masks=masks)
    torch.manual_seed(0)
    field = build_field(config)
    cond = object() if guidance is not None else None
    return Trainer(config, field, anchor, guidance=guidance, conditioning=cond, lpips=None, device=CPU)  # type: ignore[arg-type]


def test_reconstruction_alone_reproduces_a_known_scene():
    """Known answer: 4 exact views × 2 frames of a moving two-coloured sphere; the fitted field must show them."""
    videos, masks = sphere_videos(2, 24)
    trainer = make_trainer(recon_config(150), videos, masks)
    trainer.fit(150)
    with torch.no_grad():
        renders = [trainer.render(CAMERAS, [float(t)], 24, stratified=False) for t in trainer.times]
    rgb = torch.stack([r.rgb.reshape(4, 24, 24, 3) for r in renders], 1).permute(0, 1, 4, 2, 3)  # (A, F, 3, H, W)
    opacity = torch.stack([r.opacity.reshape(4, 24, 24) for r in renders], 1)
    psnr = float(-10 * torch.log10((rgb - videos).pow(2).mean()))
    assert psnr > 24.0, psnr
    iou = ((opacity > 0.5) & (masks[:, :, 0] > 0.5)).sum() / ((opacity > 0.5) | (masks[:, :, 0] > 0.5)).sum()
    assert iou > 0.85, float(iou)


class RecordingGuidance:
    """Stands in for FourDMGuidance: records what SDS is asked for and returns a loss that pulls renders to grey."""

    num_train_timesteps = 1000
    at_step = FourDMGuidance.at_step  # the trainers' entry: the real schedule arithmetic, then __call__ below

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, rgb, conditioning, *, azimuths_deg, elevation_deg, **_) -> SDSOutput:
        self.calls.append(
            {"rgb": rgb.detach().clone(), "azimuths_deg": list(azimuths_deg), "elevation": elevation_deg}
        )
        loss = (rgb - 0.5).pow(2).mean()
        return SDSOutput(loss=loss, target=rgb.detach(), latents=rgb.detach(), timestep=500)


def test_sds_waits_for_its_start_step_and_the_reconstruction_goes_on():
    videos, masks = sphere_videos(2, 8)
    guidance = RecordingGuidance()
    trainer = make_trainer(recon_config(4, sds=1.0, start_step=2), videos, masks, guidance)
    first = trainer.train_step()
    second = trainer.train_step()
    assert not guidance.calls and "loss/sds" not in first and "loss/sds" not in second
    assert "sds" not in trainer.render_stats  # no SDS render before the start step: nothing reads it
    third = trainer.train_step()
    assert len(guidance.calls) == 1 and "loss/sds" in third and "loss/reconstruction_rgb" in third


def test_deferred_and_direct_paths_take_the_same_reconstruction_steps():
    videos, masks = sphere_videos(2, 8)
    direct = make_trainer(recon_config(3), videos, masks)
    deferred = make_trainer(recon_config(3, chunk=512), videos, masks)
    assert isinstance(deferred.backprop, DeferredBackprop) and isinstance(direct.backprop, DirectBackprop)
    for _ in range(3):
        a, b = direct.train_step(), deferred.train_step()
        assert a["loss/reconstruction_rgb"] == pytest.approx(b["loss/reconstruction_rgb"], rel=1e-5)
    for (name, x), y in zip(direct.field.state_dict().items(), deferred.field.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_sds_views_reach_4dm_under_the_cameras_mvgen_uses_for_those_azimuths():
    """Camera convention, known answer: the SDS image 4DM receives for the camera vector of azimuth a is the field
    seen from the mvgen camera of azimuth a. The field is a sphere that is red only on its +x side (azimuth 0): the
    SDS view whose azimuth is nearest 0 must be the reddest, the one nearest 180 the bluest."""
    videos, masks = sphere_videos(2, 16)
    trainer = make_trainer(recon_config(40), videos, masks)
    trainer.fit(40)
    guidance = RecordingGuidance()
    sds = make_trainer(recon_config(1, sds=1.0), videos, masks, guidance)
    sds.field.load_state_dict(trainer.field.state_dict())
    sds.occupancy.load_state_dict(trainer.occupancy.state_dict())
    for _ in range(3):  # three random azimuth offsets
        sds.train_step()
    for call in guidance.calls:
        rgb = call["rgb"][0]  # (V, 3, H, W) of the first frame
        redness = (rgb[:, 0] - rgb[:, 2]).mean(dim=(1, 2))  # (V,)
        wrapped = [abs((a + 180.0) % 360.0 - 180.0) for a in call["azimuths_deg"]]
        assert int(np.argmin(wrapped)) == int(redness.argmax()), (call["azimuths_deg"], redness)
        assert int(np.argmax(wrapped)) == int(redness.argmin()), (call["azimuths_deg"], redness)
        # The same view rendered at the mvgen camera of its azimuth gives the same image.
        k = int(np.argmin(wrapped))
        mvgen_camera = OrbitCamera.from_angles(0, call["azimuths_deg"][k], call["elevation"], 1.1, 45.0)
        with torch.no_grad():
            out = sds.render([mvgen_camera], [0.0], 16, stratified=False)
        redness_mvgen = float((out.rgb[:, 0] - out.rgb[:, 2]).mean())
        assert redness_mvgen == pytest.approx(float(redness[k]), abs=0.05)
