"""GaussianField4D: N 3D Gaussians whose centres move with time, and their files (ours; the paper uses the NeRF).

Each Gaussian has a canonical centre μ0, log standard deviations, a rotation quaternion (w, x, y, z), an opacity logit
and RGB colour logits (view-independent colour, as the NeRF's colour MLP). Its centre at time t ∈ [0, 1] is

    μ(t) = μ0 + Σ_{k=1..K} c_k t^k          (K = `motion_degree`; 0 = a static scene)

Why this motion model: an input clip is a few frames (8) of smooth motion, so a low-order polynomial per Gaussian
(K ≤ 3: 3K numbers each) fits it without the per-frame freedom that would let every frame's Gaussians fit their
own views independently; it is linear in its coefficients (a well-posed least-squares fit of the frames' positions),
and exactly canonical at t = 0 (the first frame, where the visual hull initialises the centres). Shape and colour are
shared by all frames: the clip's motion is mostly rigid parts moving, and the views of every frame constrain them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = ["GaussianField4D", "save_gaussians", "load_gaussians"]


class GaussianField4D(nn.Module):
    """N Gaussians with polynomial centre motion (module docstring). Parameters start as an empty scene at the
    origin; `initialise` places them (stages/distill/gaussians/init.py computes where).

    Args:
        num_gaussians: N.
        motion_degree: K, the highest power of t in the centres' motion (0: static).
    """

    def __init__(self, num_gaussians: int, motion_degree: int = 2) -> None:
        super().__init__()
        if num_gaussians < 1 or motion_degree < 0:
            raise ValueError(
                f"GaussianField4D: need num_gaussians >= 1 and motion_degree >= 0, got "
                f"{num_gaussians}, {motion_degree}"
            )
        self.num_gaussians, self.motion_degree = num_gaussians, motion_degree
        self.means = nn.Parameter(torch.zeros(num_gaussians, 3))
        self.log_scales = nn.Parameter(torch.full((num_gaussians, 3), -4.0))
        self.quats = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(num_gaussians, 1))
        self.opacity_logits = nn.Parameter(torch.zeros(num_gaussians))
        self.colour_logits = nn.Parameter(torch.zeros(num_gaussians, 3))
        self.motion = nn.Parameter(torch.zeros(num_gaussians, motion_degree, 3))
        """c_k of μ(t) = μ0 + Σ c_k t^k: (N, K, 3), row k−1 for t^k."""

    @torch.no_grad()
    def initialise(self, means: Tensor, colours: Tensor, scale: float, opacity: float = 0.1) -> None:
        """Centres (N, 3), colours (N, 3) in (0, 1), one isotropic standard deviation (world units), one opacity;
        identity rotations and no motion (3DGS's initialisation, opacity 0.1)."""
        self.means.copy_(means)
        self.colour_logits.copy_(torch.logit(colours.clamp(0.02, 0.98)))
        self.log_scales.fill_(float(torch.log(torch.tensor(scale))))
        self.quats.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]).expand_as(self.quats))
        self.opacity_logits.fill_(float(torch.logit(torch.tensor(opacity))))
        self.motion.zero_()

    def means_at(self, times: Tensor) -> Tensor:
        """Centres at each time: (T,) in [0, 1] → (T, N, 3)."""
        if self.motion_degree == 0:
            return self.means[None].expand(times.shape[0], -1, -1)
        powers = torch.stack([times**k for k in range(1, self.motion_degree + 1)], dim=-1)  # (T, K)
        return self.means[None] + torch.einsum("tk,nkd->tnd", powers.to(self.means), self.motion)

    def scales(self) -> Tensor:
        """(N, 3) standard deviations, world units."""
        return self.log_scales.exp()

    def unit_quats(self) -> Tensor:
        """(N, 4) unit quaternions (w, x, y, z)."""
        return F.normalize(self.quats, dim=-1)

    def opacities(self) -> Tensor:
        """(N,) in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    def colours(self) -> Tensor:
        """(N, 3) in (0, 1)."""
        return torch.sigmoid(self.colour_logits)

    def parameter_groups(self) -> dict[str, nn.Parameter]:
        """The optimiser's groups by name (each its own learning rate, as 3DGS)."""
        return {
            "means": self.means,
            "scales": self.log_scales,
            "quats": self.quats,
            "opacity": self.opacity_logits,
            "colour": self.colour_logits,
            "motion": self.motion,
        }


def save_gaussians(directory: Path, field: GaussianField4D, field_file: str, config_file: str) -> list[str]:
    """The state dict as safetensors and the constructor arguments as JSON (`_class_name` GaussianField4D)."""
    directory = Path(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in field.state_dict().items()}, str(directory / field_file))
    record = {
        "_class_name": "GaussianField4D",
        "num_gaussians": field.num_gaussians,
        "motion_degree": field.motion_degree,
    }
    (directory / config_file).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return [field_file, config_file]


def load_gaussians(
    directory: Path, field_file: str = "field.safetensors", config_file: str = "field_config.json"
) -> GaussianField4D:
    """Rebuild a `save_gaussians` field."""
    kwargs = json.loads((Path(directory) / config_file).read_text(encoding="utf-8"))
    if kwargs.pop("_class_name") != "GaussianField4D":
        raise ValueError(f"{directory}: {config_file} is not a GaussianField4D")
    field = GaussianField4D(**kwargs)
    field.load_state_dict(load_file(str(Path(directory) / field_file)))
    return field
