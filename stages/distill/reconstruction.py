"""The reconstruction term (ours; off in the paper's recipe): random ray batches over every anchor view × frame.

The paper's anchor loss (spec §5.2) renders one whole view at one random frame per step, so 35000 steps see each
view-frame pair a few thousand times. Fitting the generated videos directly, with rays drawn uniformly over all
anchor videos (mvgen views × frames × pixels) as NeRF reconstruction does, gives every step a gradient from every
part of every video: the field reproduces the generated views in a few hundred steps, and SDS then only has to
refine the angles no view covers (the order Efficient4D, STAG4D and DreamGaussian4D use). The term is the mean
squared error of the rendered colour on white against the video's colour on white, plus (weighted separately) the
squared error of the rendered opacity against the video's foreground mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stages.common.cameras import OrbitCamera, focal_length_px
from stages.distill.anchor import AnchorTarget
from stages.distill.cameras import Rays, pixel_directions
from stages.distill.config import DistillConfig

__all__ = [
    "ReconstructionRays",
    "ReconstructionBatch",
    "build_reconstruction",
    "reconstruction_loss",
    "pixel_reconstruction_loss",
]


@dataclass
class ReconstructionBatch:
    """One step's rays and what they should see. rgb: (N, 3) in [0, 1] on white; mask: (N,) in [0, 1]."""

    rays: Rays
    times: Tensor
    rgb: Tensor
    mask: Tensor


class ReconstructionRays:
    """Every pixel of every anchor video as a ray with its time, colour and foreground mask.

    Args:
        videos: (A, F, 3, H, W) in [0, 1], colours on white, one video per camera.
        masks: (A, F, 1, H, W) in [0, 1], foreground.
        cameras: the A cameras, in `videos` order.
        times: (F,) the frames' times in [0, 1].
        device: where the rays and targets live (they are drawn from there each step).
        jitter: a ray goes through a uniformly random point of its pixel, not its centre (`reconstruction.jitter`).
    """

    def __init__(
        self,
        videos: Tensor,
        masks: Tensor,
        cameras: list[OrbitCamera],
        times: Tensor,
        device: torch.device,
        jitter: bool = False,
    ) -> None:
        num_cams, num_frames, _, size, width = videos.shape
        if size != width or masks.shape != (num_cams, num_frames, 1, size, size) or len(cameras) != num_cams:
            raise ValueError(
                f"ReconstructionRays: videos {tuple(videos.shape)}, masks {tuple(masks.shape)}, {len(cameras)} cameras"
            )
        self.num_cameras, self.num_frames, self.size, self.pixels = num_cams, num_frames, size, size * size
        self.jitter = jitter
        # Per camera: c2w rotation (A, 3, 3), position (A, 3) and focal length in pixels (A,): a ray goes through its
        # pixel's centre, or a random point of the pixel with jitter.
        c2w = torch.tensor([c.c2w for c in cameras], dtype=torch.float32, device=device)
        self.rotations, self.positions = c2w[:, :3, :3], c2w[:, :3, 3].contiguous()
        self.focals = torch.tensor([focal_length_px(c.fov_y_deg, size) for c in cameras], device=device)
        # (A, F, C, H, W) → (F, A, H, W, C) → (F·A·H·W, C): index = (frame·A + camera)·H·W + pixel
        self.rgb = videos.permute(1, 0, 3, 4, 2).reshape(-1, 3).to(device)
        self.mask = masks.permute(1, 0, 3, 4, 2).reshape(-1).to(device)
        self.times = times.to(device)

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def sample(self, count: int, generator: torch.Generator) -> ReconstructionBatch:
        """`count` rays drawn uniformly (with replacement) over all pixels of all videos, from `generator` (CPU)."""
        index = torch.randint(len(self), (count,), generator=generator)
        offsets = torch.rand(count, 2, generator=generator) if self.jitter else torch.full((count, 2), 0.5)
        index, offsets = index.to(self.rgb.device), offsets.to(self.rgb.device)
        per_frame = self.num_cameras * self.pixels
        camera = (index % per_frame) // self.pixels
        pixel = index % self.pixels
        frame = index // per_frame
        x = (pixel % self.size).float() + offsets[:, 0]  # offsets ½: the pixel's centre, as camera_rays
        y = (pixel // self.size).float() + offsets[:, 1]
        directions = pixel_directions(self.rotations[camera], self.focals[camera], self.size, x, y)
        return ReconstructionBatch(
            rays=Rays(self.positions[camera], directions),
            times=self.times[frame],
            rgb=self.rgb[index],
            mask=self.mask[index],
        )


def reconstruction_loss(
    rgb: Tensor, opacity: Tensor, batch: ReconstructionBatch, rgb_weight: float, mask_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted term of a batch's renders, rgb (N, 3) on white and opacity (N,), and its logged parts."""
    return pixel_reconstruction_loss(rgb, opacity, batch.rgb, batch.mask, rgb_weight, mask_weight)


def pixel_reconstruction_loss(
    rgb: Tensor, opacity: Tensor, target_rgb: Tensor, target_mask: Tensor, rgb_weight: float, mask_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The term on any rendered pixels: rgb (N, 3) on white vs `target_rgb` (N, 3), opacity (N,) vs the foreground
    `target_mask` (N,); the weighted sum and the logged parts (the Gaussian path renders whole images)."""
    rgb_mse = (rgb - target_rgb).pow(2).mean()
    mask_mse = (opacity - target_mask).pow(2).mean()
    parts = {
        "loss/reconstruction_rgb": rgb_mse.detach(),
        "loss/reconstruction_mask": mask_mse.detach(),
        "psnr/reconstruction": -10.0 * torch.log10(rgb_mse.detach().clamp(min=1e-10)),
    }
    return rgb_weight * rgb_mse + mask_weight * mask_mse, parts


def build_reconstruction(
    config: DistillConfig, anchor: AnchorTarget, times: Tensor, device: torch.device
) -> ReconstructionRays | None:
    """The rays of every anchor video when `reconstruction.rays_per_step` > 0, else None.

    Raises:
        ValueError: the mask term is weighted but the anchor videos have no masks.
    """
    if config.reconstruction.rays_per_step == 0:
        return None
    mask_weight = config.loss_weights.reconstruction_mask
    if anchor.masks is None and max(mask_weight.start_value, mask_weight.end_value) > 0:
        raise ValueError("loss_weights.reconstruction_mask > 0 needs the anchor videos' masks")
    videos = anchor.videos()
    masks = anchor.masks if anchor.masks is not None else torch.ones_like(videos[:, :, :1])
    return ReconstructionRays(videos, masks, anchor.cameras, times, device, jitter=config.reconstruction.jitter)
