"""4DM training (its own DVC stage, separate from sampling as diffusers keeps pipelines inference-only)."""

from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.train_fourdm import run

__all__ = ["TrainConfig", "run"]
