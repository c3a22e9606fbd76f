"""distill stage: dynamic NeRF optimised with 4D-aware SDS through 4DM and the anchor loss (spec §4–5)."""

from stages.common.artifacts import DistillManifest
from stages.distill.config import DistillConfig
from stages.distill.run import run

__all__ = ["run", "DistillConfig", "DistillManifest"]
