"""The eval stage: CLIP-I, CLIP-C, FVD, LPIPS, PSNR and SSIM against ground-truth views (spec §6)."""

from typing import TYPE_CHECKING

from stages.eval.config import EvalConfig
from stages.eval.manifest import EvalManifest

if TYPE_CHECKING:
    from stages.eval.run import run

__all__ = ["EvalConfig", "EvalManifest", "run"]


def __getattr__(name: str) -> object:
    # `run` imports torch: loaded on first use, so that reading a config does not (tests/test_config_imports.py).
    # Import it through this package only: a direct `import stages.eval.run` would bind the module to this name.
    if name == "run":
        from stages.eval.run import run

        globals()["run"] = run  # the import above bound the submodule to this name
        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
