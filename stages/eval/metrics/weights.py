"""Local weight files: load a state dict safely and exactly, or say which file is missing.

Checkpoints are read with `torch.load(weights_only=True)` (tensors only, no pickled code) or safetensors,
and must match the network key for key and shape for shape: a missing file skips its metric, a wrong file is
an error, never a silently different network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from stages.common.checkpoints import load_exact
from stages.common.errors import StageError

__all__ = ["MissingWeights", "load_state_dict_file", "load_exact", "require"]


class MissingWeights(Exception):
    """A metric's weight file or folder is not there; the stage records the metric as skipped."""

    def __init__(self, wanted: Path, reason: str = "weights not found") -> None:
        super().__init__(f"{reason}: {wanted}")
        self.wanted = wanted
        self.reason = reason


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Tensors of a `.safetensors` file or a torch state-dict file (`.pt`/`.pth`, loaded with weights_only).

    Raises:
        StageError: the file cannot be read as a flat mapping of tensors.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        first = (str(err).strip().splitlines() or [""])[0]
        raise StageError(f"{path}: not a readable state dict ({type(err).__name__}: {first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise StageError(f"{path}: expected a mapping of parameter names to tensors")
    return state


def require(weights_dir: Path | None, *paths: Path) -> None:
    """Raise MissingWeights for the first of `paths` that is absent (or for any, without a weights folder)."""
    for path in paths:
        if weights_dir is None:
            raise MissingWeights(path, "no --weights folder given")
        if not path.exists():
            raise MissingWeights(path)
