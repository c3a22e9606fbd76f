"""The anchor target: the input video (and optional extra mvgen views) the anchor loss compares renders with."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch
from torch import Tensor

from stages.common.cameras import OrbitCamera

__all__ = ["AnchorTarget"]


@dataclass
class AnchorTarget:
    """The anchor video (spec §5.2): frames (F, 3, H, W) in [0, 1] on white, seen from `camera`; optionally more
    mvgen views used the same way (`cameras.extra_anchor_views`, ours): `extra_frames` (E, F, 3, H, W) seen from
    `extra_cameras` (E)."""

    frames: Tensor
    camera: OrbitCamera
    extra_frames: Tensor | None = None
    extra_cameras: list[OrbitCamera] = dataclass_field(default_factory=list)
    masks: Tensor | None = None
    """Foreground masks (1 + E, F, 1, H, W) in [0, 1] of the anchor video and the extra ones, in `cameras` order
    (the reconstruction term's opacity target; optional otherwise)."""

    def __post_init__(self) -> None:
        count = 0 if self.extra_frames is None else self.extra_frames.shape[0]
        if count != len(self.extra_cameras):
            raise ValueError(f"AnchorTarget: {count} extra anchor videos but {len(self.extra_cameras)} cameras")
        num_frames, _, height, width = self.frames.shape
        if self.masks is not None and self.masks.shape != (count + 1, num_frames, 1, height, width):
            raise ValueError(f"AnchorTarget: masks {tuple(self.masks.shape)} do not match the anchor videos")
        if self.extra_frames is not None and self.extra_frames.shape[1:] != self.frames.shape:
            raise ValueError(
                f"AnchorTarget: extra anchor videos {tuple(self.extra_frames.shape[1:])} differ from the anchor video "
                f"{tuple(self.frames.shape)}"
            )

    @property
    def cameras(self) -> list[OrbitCamera]:
        return [self.camera, *self.extra_cameras]

    def videos(self) -> Tensor:
        """(1 + E, F, 3, H, W): the anchor video and each extra one, in `cameras` order."""
        first = self.frames[None]
        return first if self.extra_frames is None else torch.cat([first, self.extra_frames])

    def frame(self, index: int) -> Tensor:
        """(1 + E, 3, H, W): frame `index` of the anchor video and of each extra one, in `cameras` order."""
        first = self.frames[index : index + 1]
        if self.extra_frames is None:
            return first
        return torch.cat([first, self.extra_frames[:, index]])
