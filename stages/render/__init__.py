"""Render stage: animated 3D asset → input frames, ground-truth views, training clips (spec §2.7).

Importing this package does not import `bpy`; only `run` does, when it renders.
"""

from stages.common.artifacts import RenderManifest
from stages.render.config import CameraConfig, CurationConfig, LightingConfig, RenderConfig, TrainClipsConfig
from stages.render.run import BatchSummary, run

__all__ = [
    "run",
    "RenderConfig",
    "CameraConfig",
    "LightingConfig",
    "TrainClipsConfig",
    "CurationConfig",
    "RenderManifest",
    "BatchSummary",
]
