"""LPIPS with a VGG16 backbone as the official anchor loss computes it (`lpipsPyTorch`, spec §5.2).

Zhang et al. 2018, v0.1 linear heads. The computation of S-aiueo32/lpips-pytorch (`lpipsPyTorch`, BSD-2-Clause),
which 4Diffusion's `fourdiffusion.py` calls: inputs are shifted/scaled by LPIPS' fixed constants, VGG16 features
are tapped after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, each tap is divided by its channel norm
(`x / (‖x‖ + 1e-10)`), squared differences are weighted per channel by the 1×1 heads, averaged over space and
summed over layers. The official code feeds images in [0, 1] without rescaling to [−1, 1]; so do we.

Weights come from local files only, the same two files the eval stage reads (`<lpips dir>/`):
`vgg16-397923af.pth` (torchvision ImageNet VGG16; `features.*` used) and `vgg.pth` (LPIPS v0.1 heads,
`lin{0..4}.model.1.weight`). The backbone's widths are read from the file, so a small random VGG saved in the same
layout (the tests) loads too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from stages.common.errors import StageError

__all__ = ["LPIPSVGG", "load_lpips_vgg", "LPIPS_FILES", "VGG16_WIDTHS"]

LPIPS_FILES = ("vgg16-397923af.pth", "vgg.pth")
"""Backbone and heads file names inside the LPIPS folder."""
VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
"""Output channels of VGG16's 13 convolutions."""
_POOL_AFTER = (1, 3, 6, 9)
"""Conv indices (0-based among convs) followed by a max-pool before the last tap."""
_TAP_AFTER = (1, 3, 6, 9, 12)
"""Conv indices whose ReLU output is an LPIPS tap."""


class LPIPSVGG(nn.Module):
    """LPIPS-VGG (module docstring); module indices of `features` follow torchvision so its state dict loads.

    Args:
        widths: the 13 convolutions' output channels (VGG16's by default).
    """

    def __init__(self, widths: tuple[int, ...] = VGG16_WIDTHS) -> None:
        super().__init__()
        if len(widths) != 13:
            raise ValueError(f"VGG16 has 13 convolutions, got {len(widths)} widths")
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        channels = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
            channels = width
            if i in _TAP_AFTER:
                self.taps.append(len(layers) - 1)
            if i in _POOL_AFTER:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        tap_channels = [widths[i] for i in _TAP_AFTER]
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in tap_channels)
        self.eval().requires_grad_(False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        x = (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
                if index == self.taps[-1]:
                    break
        return out

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Mean LPIPS over the batch.

        Args:
            x0, x1: (N, 3, H, W) RGB in [0, 1] (fed unscaled, as the official anchor loss does).

        Returns:
            scalar; gradients flow to both inputs (the network itself is frozen).
        """
        total = x0.new_zeros(x0.shape[0])
        for f0, f1, head in zip(self._taps(x0), self._taps(x1), self.lin, strict=True):
            total = total + head((f0 - f1) ** 2).mean(dim=(1, 2, 3))  # (N, 1, h, w) → (N,)
        return total.mean()


def load_lpips_vgg(lpips_dir: Path) -> LPIPSVGG:
    """Build LPIPS-VGG from `<lpips_dir>/vgg16-397923af.pth` and `<lpips_dir>/vgg.pth`.

    Raises:
        StageError: a file is missing (names it and where to get it) or does not hold the expected tensors.
    """
    lpips_dir = Path(lpips_dir)
    backbone_file, heads_file = (lpips_dir / name for name in LPIPS_FILES)
    for path in (backbone_file, heads_file):
        if not path.is_file():
            raise StageError(
                f"LPIPS weights not found: {path}. The anchor loss needs torchvision's VGG16 "
                f"(`{LPIPS_FILES[0]}`, download.pytorch.org/models/) and the LPIPS v0.1 heads (`{LPIPS_FILES[1]}`, "
                "richzhang/PerceptualSimilarity lpips/weights/v0.1/vgg.pth) in that folder (weights/README.md)"
            )
    backbone, heads = (_read_tensors(p) for p in (backbone_file, heads_file))
    conv_keys = sorted(
        (k for k in backbone if k.startswith("features.") and k.endswith(".weight")),
        key=lambda k: int(k.split(".")[1]),
    )
    widths = tuple(int(backbone[k].shape[0]) for k in conv_keys)
    if len(widths) != 13:
        raise StageError(f"{backbone_file}: expected VGG16's 13 `features.*` convolutions, found {len(widths)}")
    model = LPIPSVGG(widths)
    state = {k: v for k, v in backbone.items() if k.startswith("features.")}
    state.update({f"lin.{i}.weight": heads.get(f"lin{i}.model.1.weight") for i in range(5)})
    expected = model.state_dict()
    bad = sorted(k for k in expected if state.get(k) is None or tuple(state[k].shape) != tuple(expected[k].shape))
    extra = sorted(set(state) - set(expected))
    if bad or extra:
        raise StageError(
            f"{lpips_dir}: not LPIPS-VGG weights (missing or mis-shaped {bad[:3]}, unexpected {extra[:3]})"
        )
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise StageError(f"{path}: not a readable state dict ({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise StageError(f"{path}: expected a mapping of parameter names to tensors")
    return state
