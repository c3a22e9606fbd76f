"""Logging set-up for the CLIs, and the progress of long loops: a bar on a terminal, bounded-rate lines in logs."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from tqdm.auto import tqdm

__all__ = ["setup_logging", "progress", "Progress", "PROGRESS_EVERY_ENV", "MAX_PROGRESS_EVERY_S"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS_EVERY_ENV = "FOURD_PROGRESS_EVERY_S"
"""Environment variable: seconds between two progress lines when stderr is not a terminal (default 10)."""
DEFAULT_PROGRESS_EVERY_S = 10.0
MAX_PROGRESS_EVERY_S = 30.0
"""A worker log hears from a running loop at least this often, whatever `FOURD_PROGRESS_EVERY_S` says."""

clock: Callable[[], float] = time.monotonic
"""The progress lines' clock (seconds); tests replace it with a fake one."""

# Third-party log records that repeat on every model load and say nothing a user can act on:
# logger name → message fragments. The loggers exist before their libraries import them (logging.getLogger), so the
# filters hold however early the library logs.
_QUIET_RECORDS: dict[str, tuple[str, ...]] = {
    # diffusers asks for `accelerate` (low_cpu_mem_usage) on every from_pretrained of every model and pipeline;
    # our models are loaded whole either way.
    "diffusers.models.modeling_utils": (
        "because `accelerate` was not found",
        # `.to(dtype)` on a model whose fp32-only module list is empty: nothing to keep in float32.
        "should be kept in float32: []",
    ),
    "diffusers.pipelines.pipeline_utils": ("because `accelerate` was not found",),
    # CLIPImageProcessor without torchvision falls back to the PIL processor we use on purpose (fourd imports
    # CLIPImageProcessorPil; this catches a checkpoint or third-party code that names the generic class).
    "transformers.utils.import_utils": ("requires torchvision (not installed)",),
}


class _DropRecords(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def quiet_third_party() -> None:
    """Drop the repeated third-party warnings of `_QUIET_RECORDS` and, off a terminal, transformers' per-model
    "Loading weights" bars (a log would get one garbled line per model). Idempotent."""
    for name, fragments in _QUIET_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) for f in logger.filters):
            logger.addFilter(_DropRecords(fragments))
    if not sys.stderr.isatty():
        if "transformers.utils.logging" in sys.modules:  # it reads the environment variable once, at import
            sys.modules["transformers.utils.logging"].disable_progress_bar()
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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
    """Log `time level logger: message` lines to stderr; the level comes from `FOURD_LOG_LEVEL` (INFO).

    Also silences the repeated third-party warnings (`quiet_third_party`)."""
    level = (level or os.environ.get("FOURD_LOG_LEVEL", "INFO")).upper()
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("urllib3", "PIL", "matplotlib", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_third_party()


def progress_every_s() -> float:
    """Seconds between progress lines: `FOURD_PROGRESS_EVERY_S` (default 10), at most 30."""
    raw = os.environ.get(PROGRESS_EVERY_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_PROGRESS_EVERY_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", PROGRESS_EVERY_ENV, raw, DEFAULT_PROGRESS_EVERY_S)
        value = DEFAULT_PROGRESS_EVERY_S
    return min(max(value, 0.0), MAX_PROGRESS_EVERY_S)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _number(value: float) -> str:
    return f"{value:.4g}"


class Progress(Generic[T]):
    """A long loop's progress. On a terminal, a tqdm bar on stderr; otherwise (logs, CI, DVC, Prefect workers) an
    INFO line at most every `every_s` seconds and one when the loop ends, e.g.

        distill: step 40/150 (27%), 0:48 elapsed, ETA 2:12, 1.2 s/step; loss/total 0.1234, psnr/anchor 18.2

    The loop's body sets the metrics shown at the end of the line (`set_postfix`) whenever it has them.
    """

    def __init__(
        self,
        iterable: Iterable[T],
        *,
        desc: str,
        total: int | None = None,
        initial: int = 0,
        unit: str = "step",
        every_s: float | None = None,
        tty: bool | None = None,
    ) -> None:
        """
        Args:
            iterable: the loop's items.
            desc: what the loop does (`distill`, `4DM sampling`), the line's first word.
            total: the count reached at the end (default `initial + len(iterable)` when it has a length).
            initial: the count before the first item (a resumed run's step).
            unit: what one item is, for the lines (`step`, `frame`).
            every_s: seconds between two lines off a terminal (default `progress_every_s()`).
            tty: force the bar (True) or the lines (False); default: whether stderr is a terminal.
        """
        self._iterable = iterable
        self.desc, self.unit, self.initial = desc, unit, initial
        if total is None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.every_s = progress_every_s() if every_s is None else min(every_s, MAX_PROGRESS_EVERY_S)
        self.postfix: dict[str, float] = {}
        self.count = initial
        self.lines = 0
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._bar: tqdm | None = None

    def set_postfix(self, metrics: Mapping[str, float]) -> None:
        """Show these metrics (name → value) from now on, in place of the previous ones."""
        self.postfix = {k: float(v) for k, v in metrics.items()}
        if self._bar is not None:
            self._bar.set_postfix({k: _number(v) for k, v in self.postfix.items()})

    def __iter__(self) -> Iterator[T]:
        if self._tty:
            yield from self._iter_bar()
        else:
            yield from self._iter_lines()

    def _iter_bar(self) -> Iterator[T]:
        self._bar = tqdm(total=self.total, initial=self.initial, desc=self.desc, unit=self.unit, leave=False)
        try:
            for item in self._iterable:
                yield item
                self.count += 1
                self._bar.update(1)
        finally:
            self._bar.close()
            self._bar = None

    def _iter_lines(self) -> Iterator[T]:
        start = last = now = clock()
        for item in self._iterable:
            yield item  # the loop's body runs here: the item is done when control comes back
            self.count += 1
            now = clock()
            if now - last >= self.every_s and self.count != self.total:  # the last item gets the end line
                self._emit(now - start, final=False)
                last = now
        if self.lines:  # a loop short enough to print nothing on the way ends quietly too
            self._emit(now - start, final=True)

    def _emit(self, elapsed: float, *, final: bool) -> None:
        done = self.count - self.initial
        rate = elapsed / done if done else 0.0
        pace = f"{rate:.3g} s/{self.unit}" if rate >= 1 or rate == 0 else f"{1 / rate:.3g} {self.unit}s/s"
        where = f"{self.unit} {self.count}" + (f"/{self.total}" if self.total else "")
        if final:
            text = f"{self.desc}: {where} done in {_duration(elapsed)}, {pace}"
        else:
            share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
            eta = f", ETA {_duration(rate * (self.total - self.count))}" if self.total else ""
            text = f"{self.desc}: {where}{share}, {_duration(elapsed)} elapsed{eta}, {pace}"
        if self.postfix:
            text += "; " + ", ".join(f"{k} {_number(v)}" for k, v in self.postfix.items())
        log.info("%s", text)
        self.lines += 1


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    initial: int = 0,
    unit: str = "step",
) -> Progress[T]:
    """Wrap a long loop: a tqdm bar when stderr is a terminal, else a progress line at most every
    `FOURD_PROGRESS_EVERY_S` seconds (10, at most 30) with step, elapsed time, ETA and the metrics the loop sets
    (`Progress.set_postfix`)."""
    return Progress(iterable, desc=desc, total=total, initial=initial, unit=unit)
