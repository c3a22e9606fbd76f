"""4DM training (its own command, separate from sampling as diffusers keeps pipelines inference-only).

`run` loads on first use: it imports torch and diffusers, which reading a TrainConfig must not.
"""

import time

PROCESS_START = time.monotonic()
"""`schedule.minutes` counts from here: the first import of the trainer's package, before the heavy imports."""

import importlib  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from stages.mvgen.training.config import TrainConfig  # noqa: E402

if TYPE_CHECKING:
    from stages.mvgen.training.train import run

__all__ = ["PROCESS_START", "TrainConfig", "run"]


def __getattr__(name: str) -> object:
    if name != "run":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = importlib.import_module("stages.mvgen.training.train").run
    globals()[name] = value
    return value
