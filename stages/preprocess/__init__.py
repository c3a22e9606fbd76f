"""Preprocess stage: video → square RGBA frames, foreground matted and recentred (spec §1.2)."""

from typing import TYPE_CHECKING

from stages.common.artifacts import PreprocessManifest
from stages.preprocess.config import MattingConfig, PreprocessConfig

if TYPE_CHECKING:
    from stages.preprocess.run import run

__all__ = ["run", "PreprocessConfig", "MattingConfig", "PreprocessManifest"]


def __getattr__(name: str) -> object:
    # `run` imports torch: loaded on first use, so that reading a config does not (tests/test_config_imports.py).
    # Import it through this package only: a direct `import stages.preprocess.run` would bind the module to this name.
    if name == "run":
        from stages.preprocess.run import run

        globals()["run"] = run  # the import above bound the submodule to this name
        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
