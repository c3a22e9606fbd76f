"""4DM training (its own command, separate from sampling as diffusers keeps pipelines inference-only)."""

from stages.mvgen.training.config import TrainConfig
from stages.mvgen.training.train import run

__all__ = ["TrainConfig", "run"]
