"""Logging set-up for the CLIs and progress bars that stay quiet when nobody watches a terminal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["setup_logging", "progress"]

T = TypeVar("T")


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time, not the object it was when the handler was made, so a
    replaced stderr that was closed since (test runners' capture, notebooks) never breaks logging."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str | None = None) -> None:
    """Log `time level logger: message` lines to stderr; the level comes from `FOURD_LOG_LEVEL` (INFO)."""
    level = (level or os.environ.get("FOURD_LOG_LEVEL", "INFO")).upper()
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("urllib3", "PIL", "matplotlib", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap a long loop in a tqdm bar on stderr; disabled when stderr is not a TTY (logs, CI, DVC)."""
    return iter(tqdm(iterable, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False))
