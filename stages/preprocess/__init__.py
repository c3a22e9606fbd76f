"""Preprocess stage: video → square RGBA frames, foreground matted and recentred (spec §1.2)."""

from stages.common.artifacts import PreprocessManifest
from stages.preprocess.config import MattingConfig, PreprocessConfig
from stages.preprocess.run import run

__all__ = ["run", "PreprocessConfig", "MattingConfig", "PreprocessManifest"]
