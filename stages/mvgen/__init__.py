"""mvgen stage: 4DM multi-view video generation (spec §2–3).

Public API for other stages: FourDMPipeline, load_fourdm, FourDMUNet, predicted_x0, prediction_type.
"""

from stages.common.artifacts import MvgenManifest
from stages.mvgen.config import MvgenConfig
from stages.mvgen.models import FourDMUNet
from stages.mvgen.pipeline_fourdm import (
    FourDMPipeline,
    FourDMPipelineOutput,
    load_fourdm,
    predicted_x0,
    prediction_type,
)
from stages.mvgen.run import run

__all__ = [
    "run",
    "MvgenConfig",
    "MvgenManifest",
    "FourDMPipeline",
    "FourDMPipelineOutput",
    "FourDMUNet",
    "load_fourdm",
    "predicted_x0",
    "prediction_type",
]
