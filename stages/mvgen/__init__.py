"""mvgen stage: 4DM multi-view video generation (spec §2–3).

Public API for other stages: FourDMPipeline, load_fourdm, FourDMUNet, predicted_x0, prediction_type.
"""

import importlib
from typing import TYPE_CHECKING

from stages.common.artifacts import MvgenManifest
from stages.mvgen.config import MvgenConfig

if TYPE_CHECKING:
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

_PIPELINE = "stages.mvgen.pipeline_fourdm"
_LAZY = {
    "run": "stages.mvgen.run",
    "FourDMUNet": "stages.mvgen.models",
    "FourDMPipeline": _PIPELINE,
    "FourDMPipelineOutput": _PIPELINE,
    "load_fourdm": _PIPELINE,
    "predicted_x0": _PIPELINE,
    "prediction_type": _PIPELINE,
}
"""Names loaded on first use: they import torch and diffusers, which reading a config must not
(tests/test_config_imports.py). Import them through this package only: a direct `import stages.mvgen.run` would bind
the module to the name `run`."""


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # importing stages.mvgen.run bound the submodule to the name `run`
    return value
