"""LPIPS (VGG): learned perceptual distance between images (Zhang et al. 2018), the "Spa. Con." metric of §6.

The network is VGG16's convolutional part in torchvision's layout, tapped after relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3; each tap is unit-normalised over channels, the squared difference is weighted per channel
by a learned 1×1 convolution (the "lin" heads), averaged over space, and the five layers are summed. Inputs
are scaled from [-1, 1] by LPIPS' fixed shift/scale first. This is the computation of
`richzhang/PerceptualSimilarity` (lpips v0.1) as vendored in torchmetrics'
`LearnedPerceptualImagePatchSimilarity(net_type="vgg")`, which the Consistent4D protocol uses; the channel
normalisation follows torchmetrics (`x / sqrt(sum x² + 1e-8)`). The tests check it against torchmetrics.

Weights, from local files only (`<weights>/lpips/`):
- `vgg16-397923af.pth`: torchvision's ImageNet VGG16 (`torchvision.models.VGG16_Weights.IMAGENET1K_V1`, from
  download.pytorch.org/models/); keys `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}` are used,
  `classifier.*` is ignored.
- `vgg.pth`: the LPIPS v0.1 linear heads (`lpips/weights/v0.1/vgg.pth` of richzhang/PerceptualSimilarity, also
  shipped in the `lpips` wheel and as `torchmetrics/functional/image/lpips_models/vgg.pth`); keys
  `lin{0..4}.model.1.weight`, shapes (1, C, 1, 1) for C = 64, 128, 256, 512, 512.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from stages.eval.metrics.weights import load_exact, load_state_dict_file, require

__all__ = ["LPIPS_DIR", "VGG16_FILE", "HEADS_FILE", "VGG16Features", "LPIPSVGG", "lpips_weight_files", "load_lpips"]

LPIPS_DIR = "lpips"
VGG16_FILE = "vgg16-397923af.pth"
HEADS_FILE = "vgg.pth"

_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_TAPS = (3, 8, 15, 22, 29)
"""Indices in `features` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
_TAP_CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features`: 13 3×3 convolutions with ReLU and 5 max-pools, same module indices."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, 3, H, W) → the five LPIPS taps, (N, C_l, H_l, W_l) each."""
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                taps.append(x)
                if index == _TAPS[-1]:
                    break
        return taps


class _LinearHead(nn.Module):
    """A 1×1 convolution to one channel without bias; `model.1` so that lpips' state-dict keys load."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPSVGG(nn.Module):
    """LPIPS with the VGG16 backbone (module docstring). Always in eval mode; no gradients needed."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (_LinearHead(c) for c in _TAP_CHANNELS)
        self.eval()

    @property
    def heads(self) -> list[_LinearHead]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Distance per image pair.

        Args:
            x0: (N, 3, H, W) RGB in [-1, 1].
            x1: (N, 3, H, W) RGB in [-1, 1].

        Returns:
            (N,) LPIPS, 0 for identical images.
        """
        taps0 = self.net((x0 - self.shift) / self.scale)
        taps1 = self.net((x1 - self.shift) / self.scale)
        total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for f0, f1, head in zip(taps0, taps1, self.heads, strict=True):
            n0 = f0 / torch.sqrt(f0.pow(2).sum(dim=1, keepdim=True) + 1e-8)
            n1 = f1 / torch.sqrt(f1.pow(2).sum(dim=1, keepdim=True) + 1e-8)
            total = total + head((n0 - n1) ** 2).mean(dim=(1, 2, 3))  # (N, 1, H_l, W_l) → (N,)
        return total


def lpips_weight_files(weights_dir: Path | None) -> list[Path]:
    """The two files LPIPS loads (module docstring), whether or not they exist."""
    root = Path(weights_dir or "<weights>") / LPIPS_DIR
    return [root / VGG16_FILE, root / HEADS_FILE]


def load_lpips(weights_dir: Path | None) -> LPIPSVGG:
    """Build LPIPS-VGG and load the backbone and the heads from `<weights_dir>/lpips/`.

    Raises:
        MissingWeights: a file is absent (the metric is then skipped).
        StageError: a file is present but does not hold the expected tensors.
    """
    backbone_file, heads_file = lpips_weight_files(weights_dir)
    require(weights_dir, backbone_file, heads_file)
    model = LPIPSVGG()
    backbone = {k: v for k, v in load_state_dict_file(backbone_file).items() if k.startswith("features.")}
    load_exact(model.net, backbone, backbone_file)
    load_exact(model, load_state_dict_file(heads_file), heads_file, prefix="lin")
    return model.eval().requires_grad_(False)
