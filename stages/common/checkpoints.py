"""Loading a state dict into a module exactly, with an error that names the file and what is wrong."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from stages.common.errors import StageError

__all__ = ["load_exact"]


def load_exact(
    module: nn.Module, state: dict[str, Tensor], source: Path, *, prefix: str = "", what: str | None = None
) -> None:
    """Load `state` into the parameters and buffers of `module` whose names start with `prefix`, exactly.

    Args:
        module: the network.
        state: its entries (only those under `prefix`).
        source: the file `state` came from (named in the error).
        prefix: load only the module's entries whose names start with this.
        what: how the error names the expected content ("the VGG16 backbone …"); default: the module's class.

    Raises:
        StageError: keys missing from or unknown to the network, or shapes that differ (names the file).
    """
    expected = {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            shapes = f"{tuple(state[k].shape)} ≠ {tuple(expected[k].shape)}"
            parts.append(f"{len(wrong)} shape mismatches, e.g. {k}: {shapes}")
        target = what or f"the expected checkpoint for {type(module).__name__}"
        raise StageError(f"{source}: not {target} ({'; '.join(parts)})")
    module.load_state_dict({**module.state_dict(), **state}, strict=True)
