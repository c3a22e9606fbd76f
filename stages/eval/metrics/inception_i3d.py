"""InceptionI3d: the Kinetics-400 I3D video classifier whose logits FVD compares (Carreira & Zisserman 2017).

Inception-v1 inflated to 3-D, with TensorFlow-style "same" padding computed from the input size, as in
`piergiaj/pytorch-i3d` and its copy in `wilson1yan/VideoGPT` (`videogpt/fvd/pytorch_i3d.py`), whose
`i3d_pretrained_400.pt` (Kinetics-400, 12.7 M parameters, 50.9 MB) the DisCo and Consistent4D FVD scripts load.
Module names equal that checkpoint's keys: `Conv3d_1a_7x7.conv3d.weight`, `Conv3d_1a_7x7.bn.{weight,bias,
running_mean,running_var,num_batches_tracked}`, `Mixed_3b.b0.conv3d.weight`, `Mixed_3b.b1a…`, `b1b`, `b2a`,
`b2b`, `b3b`, …, `Mixed_5c.b3b.bn.*`, `logits.conv3d.{weight,bias}` (mixed blocks have no `b3a` parameters:
that branch starts with a max-pool). Batch-norm eps is 1e-5 as in VideoGPT's file, the one that produced and
reads `i3d_pretrained_400.pt` (piergiaj's own uses 1e-3 for its `rgb_imagenet.pt`).

The output is the 400 class logits averaged over the remaining time steps (VideoGPT's `forward`), which is the
FVD feature. Input: (B, 3, T, H, W) RGB in [-1, 1] with T ≥ 9 and H, W ≥ 193 (the final average pool spans
2 × 7 × 7 after 8× temporal and 32× spatial downsampling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InceptionI3d", "MIN_FRAMES", "MIN_SIZE_PX"]

MIN_FRAMES = 9
MIN_SIZE_PX = 193


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (front, back) of one axis: output size ceil(size / stride)."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    sizes = x.shape[2:]  # (T, H, W)
    (tf, tb), (hf, hb), (wf, wb) = (_same_padding(s, k, st) for s, k, st in zip(sizes, kernel, stride, strict=True))
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class MaxPool3dSame(nn.Module):
    """3-D max-pool with "same" zero padding (as the reference: pads with zeros, not −inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d ("same" padding, no bias) + BatchNorm3d + ReLU; the logits unit has a bias and neither of the others."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        batch_norm: bool = True,
        relu: bool = True,
        bias: bool = False,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.001) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels: 1×1; 1×1→3×3×3; 1×1→3×3×3; max-pool→1×1."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int], bn_eps: float) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = widths
        k3 = (3, 3, 3)
        self.b0 = Unit3D(in_channels, c0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, c1a, bn_eps=bn_eps)
        self.b1b = Unit3D(c1a, c1b, k3, bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, c2a, bn_eps=bn_eps)
        self.b2b = Unit3D(c2a, c2b, k3, bn_eps=bn_eps)
        self.b3a = MaxPool3dSame(k3, (1, 1, 1))
        self.b3b = Unit3D(in_channels, c3b, bn_eps=bn_eps)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# (name, widths) of the mixed blocks; max-pools sit before Mixed_3b, Mixed_4b and Mixed_5b.
_MIXED = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """I3D (module docstring): (B, 3, T, H, W) in [-1, 1] → (B, num_classes) time-averaged logits."""

    def __init__(self, num_classes: int = 400, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), bn_eps=bn_eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=bn_eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, widths in _MIXED:
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            block = InceptionModule(channels, widths, bn_eps)
            self.add_module(name, block)
            channels = block.out_channels
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.logits = Unit3D(channels, num_classes, batch_norm=False, relu=False, bias=True)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """Time-averaged logits.

        Args:
            x: (B, 3, T, H, W) RGB in [-1, 1], T ≥ 9, H and W ≥ 193.

        Returns:
            (B, num_classes) logits averaged over time.
        """
        t, h, w = x.shape[2:]
        if t < MIN_FRAMES or min(h, w) < MIN_SIZE_PX:
            raise ValueError(f"I3D needs ≥ {MIN_FRAMES} frames of ≥ {MIN_SIZE_PX} px, got {t} frames of {h}×{w}")
        for module in self.children():
            if module is self.avg_pool:
                break
            x = module(x)
        x = self.logits(self.avg_pool(x))  # (B, classes, T', H', W'); dropout is identity in eval
        # (B, classes, T', H', W') → (B, classes); H' = W' = 1 for inputs up to 224 px, where this equals the
        # reference's squeeze; larger inputs average over space too.
        return x.mean(dim=(2, 3, 4))
