"""distill stage: dynamic NeRF optimised with 4D-aware SDS through 4DM and the anchor loss (spec §4–5)."""

from typing import TYPE_CHECKING

from stages.common.artifacts import DistillManifest
from stages.distill.config import DistillConfig

if TYPE_CHECKING:
    from stages.distill.run import run

__all__ = ["run", "DistillConfig", "DistillManifest"]


def __getattr__(name: str) -> object:
    # `run` imports torch: loaded on first use, so that reading a config does not (tests/test_config_imports.py).
    # Import it through this package only: a direct `import stages.distill.run` would bind the module to this name.
    if name == "run":
        from stages.distill.run import run

        globals()["run"] = run  # the import above bound the submodule to this name
        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
