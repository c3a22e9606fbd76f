"""LPIPS with a VGG16 backbone (Zhang et al. 2018, v0.1 heads): eval's "Spa. Con." metric and distill's anchor loss.

The network is VGG16's convolutional part in torchvision's layout (`net.features`, same module indices), tapped
after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3. Images are shifted/scaled by LPIPS' fixed constants, each
tap is unit-normalised over channels, the squared difference of the two images' taps is weighted per channel by
a learned 1×1 convolution (the heads `lin0..lin4`), averaged over space, and the five layers are summed.

Two call sites reproduce two reference codes, so two choices are explicit constructor arguments:
- `channel_norm`: `"lpips"` divides by `‖x‖ + 1e-10` (richzhang/PerceptualSimilarity, and S-aiueo32/lpips-pytorch
  = `lpipsPyTorch`, which 4Diffusion's anchor loss calls); `"torchmetrics"` divides by `sqrt(‖x‖² + 1e-8)`
  (torchmetrics' `LearnedPerceptualImagePatchSimilarity`, which the Consistent4D evaluation uses). They differ
  where a tap is nearly zero over all channels, which narrow networks hit often.
- `input_range`: `"minus_one_to_one"` is LPIPS' convention (eval rescales its [0, 1] images itself);
  `"zero_to_one_unscaled"` takes [0, 1] images and feeds them as they are, as 4Diffusion's anchor loss does
  (spec §5.2: no rescaling to [−1, 1]). The network computes the same function of its input either way; the
  argument says what the caller hands in, and `forward` rejects images outside that range.

Weights, from local files only, in one folder (eval: `<weights>/lpips/`, distill: `--lpips`):
- `vgg16-397923af.pth`: torchvision's ImageNet VGG16 (`VGG16_Weights.IMAGENET1K_V1`, download.pytorch.org/models/);
  keys `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}` are used, anything else (`classifier.*`) is
  ignored. A narrower random VGG in the same layout (the tests) loads when the caller asks for the widths of the
  file (`widths=None`).
- `vgg.pth`: the LPIPS v0.1 heads (`lpips/weights/v0.1/vgg.pth` of richzhang/PerceptualSimilarity, also in the
  `lpips` wheel and as torchmetrics' `functional/image/lpips_models/vgg.pth`); exactly the keys
  `lin{0..4}.model.1.weight`, shapes (1, C, 1, 1) for the five tap widths C (64, 128, 256, 512, 512).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from stages.common.checkpoints import load_exact
from stages.common.errors import StageError

__all__ = [
    "LPIPSVGG",
    "VGG16Features",
    "LinearHead",
    "InputRange",
    "ChannelNorm",
    "VGG16_WIDTHS",
    "BACKBONE_FILE",
    "HEADS_FILE",
    "lpips_files",
    "load_lpips_vgg",
    "save_lpips_vgg",
]

InputRange = Literal["minus_one_to_one", "zero_to_one_unscaled"]
ChannelNorm = Literal["lpips", "torchmetrics"]

BACKBONE_FILE = "vgg16-397923af.pth"
HEADS_FILE = "vgg.pth"
VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
"""Output channels of VGG16's 13 convolutions."""
_POOL_AFTER = (1, 3, 6, 9, 12)
"""Convolutions (0-based) followed by a 2×2 max-pool (torchvision's cfg "D": pools at features 4, 9, 16, 23, 30)."""
_TAP_AFTER = (1, 3, 6, 9, 12)
"""Convolutions whose ReLU output is an LPIPS tap (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)."""
_RANGES: dict[str, tuple[float, float]] = {"minus_one_to_one": (-1.0, 1.0), "zero_to_one_unscaled": (0.0, 1.0)}
_RANGE_SLACK = 1e-3
"""Rounding allowed outside the declared input range (composited renders can exceed 1 by a few ulps)."""


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features` (13 3×3 convolutions with ReLU, 5 max-pools, same module indices).

    Args:
        widths: the 13 convolutions' output channels (VGG16's by default; narrower ones for tests).
    """

    def __init__(self, widths: tuple[int, ...] = VGG16_WIDTHS) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 13 or min(widths) < 1:
            raise ValueError(f"VGG16 has 13 convolutions of positive width, got widths {widths}")
        self.widths = widths
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

    @property
    def tap_channels(self) -> tuple[int, ...]:
        """Channels of the five taps."""
        return tuple(self.widths[i] for i in _TAP_AFTER)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, 3, H, W) → the five taps, (N, C_l, H_l, W_l) each (the last max-pool is never run)."""
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                taps.append(x)
                if index == self.taps[-1]:
                    break
        return taps


class LinearHead(nn.Module):
    """A 1×1 convolution to one channel without bias, as `model.1` so that lpips' state-dict keys load.

    `model.0` is lpips' dropout slot, an identity here: a frozen metric has no train-mode behaviour.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPSVGG(nn.Module):
    """LPIPS-VGG (module docstring); frozen (eval mode, no parameter gradients), gradients flow to the images.

    Args:
        input_range: what the caller passes in (module docstring): `minus_one_to_one` or `zero_to_one_unscaled`.
        channel_norm: the tap normalisation of the reference code to reproduce, `lpips` or `torchmetrics`.
        widths: the backbone's 13 convolution widths (VGG16's by default).
    """

    def __init__(
        self, *, input_range: InputRange, channel_norm: ChannelNorm, widths: tuple[int, ...] = VGG16_WIDTHS
    ) -> None:
        super().__init__()
        if input_range not in _RANGES:
            raise ValueError(f"input_range must be one of {sorted(_RANGES)}, got {input_range!r}")
        if channel_norm not in ("lpips", "torchmetrics"):
            raise ValueError(f"channel_norm must be 'lpips' or 'torchmetrics', got {channel_norm!r}")
        self.input_range, self.channel_norm = input_range, channel_norm
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features(widths)
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (LinearHead(c) for c in self.net.tap_channels)
        self.eval().requires_grad_(False)

    @property
    def heads(self) -> list[LinearHead]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def normalise(self, tap: Tensor) -> Tensor:
        """Unit-normalise a tap (N, C, H, W) over its channels, the reference's way (`channel_norm`)."""
        if self.channel_norm == "torchmetrics":
            return tap / torch.sqrt(tap.pow(2).sum(dim=1, keepdim=True) + 1e-8)
        return tap / (tap.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """Distance per image pair.

        Args:
            x0: (N, 3, H, W) RGB in the declared `input_range`.
            x1: (N, 3, H, W) RGB in the declared `input_range`.

        Returns:
            (N,) LPIPS, 0 for identical images.

        Raises:
            ValueError: the shapes differ or a value lies outside `input_range`.
        """
        if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (N, 3, H, W) batches of one shape, got {tuple(x0.shape)}, {tuple(x1.shape)}"
            )
        low, high = _RANGES[self.input_range]
        a, b = x0.detach(), x1.detach()
        seen_low, seen_high = torch.stack(
            [torch.minimum(a.amin(), b.amin()), torch.maximum(a.amax(), b.amax())]
        ).tolist()
        if seen_low < low - _RANGE_SLACK or seen_high > high + _RANGE_SLACK:
            raise ValueError(
                f"LPIPS built for input_range {self.input_range!r} ([{low:g}, {high:g}]) got values in "
                f"[{seen_low:.4g}, {seen_high:.4g}]"
            )
        total = x0.new_zeros(x0.shape[0])
        for n0, n1, head in zip(self._normalised_taps(x0), self._normalised_taps(x1), self.heads, strict=True):
            total = total + head((n0 - n1) ** 2).mean(dim=(1, 2, 3))  # (N, 1, H_l, W_l) → (N,)
        return total

    def _normalised_taps(self, x: Tensor) -> list[Tensor]:
        # Each tap is normalised as soon as it is computed: the order of operations (and so of the gradient
        # accumulation at each tap, to the last bit) of the anchor loss this replaces.
        out = []
        x = (x - self.shift) / self.scale
        for index, layer in enumerate(self.net.features):
            x = layer(x)
            if index in self.net.taps:
                out.append(self.normalise(x))
                if index == self.net.taps[-1]:
                    break
        return out


def lpips_files(lpips_dir: Path) -> tuple[Path, Path]:
    """The backbone and heads files inside an LPIPS folder, whether or not they exist."""
    return Path(lpips_dir) / BACKBONE_FILE, Path(lpips_dir) / HEADS_FILE


def load_lpips_vgg(
    lpips_dir: Path,
    *,
    input_range: InputRange,
    channel_norm: ChannelNorm,
    widths: tuple[int, ...] | None = VGG16_WIDTHS,
) -> LPIPSVGG:
    """Build LPIPS-VGG and load `<lpips_dir>/vgg16-397923af.pth` and `<lpips_dir>/vgg.pth` (module docstring).

    Args:
        lpips_dir: the folder holding both files.
        input_range, channel_norm: as `LPIPSVGG`.
        widths: the backbone widths the files must have (VGG16's); None takes them from the backbone file.

    Returns:
        The frozen network on the CPU.

    Raises:
        StageError: a file is missing (names it and where to get it), unreadable, or not the expected tensors.
    """
    backbone_file, heads_file = lpips_files(lpips_dir)
    for path in (backbone_file, heads_file):
        if not path.is_file():
            raise StageError(
                f"LPIPS weights not found: {path}. LPIPS needs torchvision's VGG16 (`{BACKBONE_FILE}`, "
                f"download.pytorch.org/models/) and the LPIPS v0.1 heads (`{HEADS_FILE}`, "
                "richzhang/PerceptualSimilarity lpips/weights/v0.1/vgg.pth) in that folder (weights/README.md)"
            )
    backbone = {k: v for k, v in _read_tensors(backbone_file).items() if k.startswith("features.")}
    heads = _read_tensors(heads_file)
    if widths is None:
        widths = _widths_of(backbone, backbone_file)
    model = LPIPSVGG(input_range=input_range, channel_norm=channel_norm, widths=widths)
    load_exact(model.net, backbone, backbone_file, what="the VGG16 backbone (`features.*`) of LPIPS-VGG")
    load_exact(
        model, heads, heads_file, prefix="lin", what="the LPIPS heads (`lin{0..4}.model.1.weight`) of LPIPS-VGG"
    )
    return model.eval().requires_grad_(False)


def save_lpips_vgg(model: LPIPSVGG, lpips_dir: Path) -> Path:
    """Write `model`'s weights as the two files `load_lpips_vgg` reads (torchvision / lpips key layouts).

    Returns:
        `lpips_dir`, created if needed.
    """
    lpips_dir = Path(lpips_dir)
    lpips_dir.mkdir(parents=True, exist_ok=True)
    backbone_file, heads_file = lpips_files(lpips_dir)
    torch.save({k: v.detach().cpu() for k, v in model.net.state_dict().items()}, backbone_file)
    heads = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("lin")}
    torch.save(heads, heads_file)
    return lpips_dir


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """A flat name → tensor mapping from a torch file (`weights_only`), unwrapping a `state_dict` entry."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        first = (str(err).strip().splitlines() or [""])[0]
        raise StageError(f"{path}: not a readable state dict ({type(err).__name__}: {first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise StageError(f"{path}: expected a mapping of parameter names to tensors")
    return state


def _widths_of(backbone: dict[str, Tensor], source: Path) -> tuple[int, ...]:
    """The 13 convolution widths of a torchvision-layout backbone state dict."""
    convs = sorted(
        (k for k, v in backbone.items() if k.endswith(".weight") and v.ndim == 4),
        key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else -1,
    )
    if len(convs) != 13:
        raise StageError(
            f"{source}: not the LPIPS-VGG backbone: expected VGG16's 13 `features.*` convolutions, found {len(convs)}"
        )
    return tuple(int(backbone[k].shape[0]) for k in convs)
