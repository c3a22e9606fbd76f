"""Render stage: animated 3D asset → input frames, ground-truth views, training clips (spec §2.7).

Importing this package does not import `bpy`; only `run` does, when it renders.
"""

import importlib
from typing import TYPE_CHECKING

from stages.common.artifacts import RenderManifest
from stages.render.config import CameraConfig, CurationConfig, LightingConfig, RenderConfig, TrainClipsConfig

if TYPE_CHECKING:
    from stages.render.run import BatchSummary, render_asset, run

__all__ = [
    "run",
    "RenderConfig",
    "CameraConfig",
    "LightingConfig",
    "TrainClipsConfig",
    "CurationConfig",
    "RenderManifest",
    "BatchSummary",
    "render_asset",
]

_LAZY = {"run": "stages.render.run", "BatchSummary": "stages.render.run", "render_asset": "stages.render.run"}
"""Names loaded on first use, so that reading a config imports no numerical code (tests/test_config_imports.py).
Import them through this package only: a direct `import stages.render.run` would bind the module to the name `run`."""


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # importing stages.render.run bound the submodule to the name `run`
    return value
