"""Device choice: `auto` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""

from __future__ import annotations

from typing import Literal

import torch

from stages.common.errors import StageError

__all__ = ["DeviceName", "resolve_device"]

DeviceName = Literal["auto", "cpu", "cuda"]


def resolve_device(name: DeviceName) -> torch.device:
    """Map a config's device field to a torch device.

    Raises:
        StageError: `cuda` was asked for but torch sees no CUDA device.
    """
    match name:
        case "cpu":
            return torch.device("cpu")
        case "cuda":
            if not torch.cuda.is_available():
                raise StageError("device 'cuda' requested but torch sees no CUDA device (use device=auto or cpu)")
            return torch.device("cuda")
        case "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise StageError(f"unknown device {name!r}; expected auto, cpu or cuda")
