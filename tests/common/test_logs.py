"""Progress of long loops (a bar on a terminal, bounded-rate lines otherwise) and the silenced third-party warnings."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from stages.common import logs
from stages.common.logs import MAX_PROGRESS_EVERY_S, Progress, progress, quiet_third_party


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(logs, "clock", clock)
    return clock


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stages.common.logs"]


def test_off_a_terminal_lines_come_at_the_bounded_rate_with_eta_and_metrics(fake_clock, caplog, monkeypatch):
    monkeypatch.setenv("FOURD_PROGRESS_EVERY_S", "10")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    caplog.set_level(logging.INFO, logger="stages.common.logs")
    steps = progress(range(100), desc="distill", total=150, initial=50)
    for step in steps:
        fake_clock.now += 3.0  # each step takes 3 s
        steps.set_postfix({"loss/total": 0.01 * step, "psnr/anchor": 20.0})
    lines = progress_lines(caplog)
    # 300 s of work, a line each time 10 s have passed since the last one (every 4th step: 12 s); the end line
    # stands for the one the last step would have had.
    assert len(lines) == 300 // 12
    first = lines[0]
    assert first.startswith("distill: step 54/150 (36%), 0:12 elapsed, ETA 4:48, 3 s/step; ")
    assert first.endswith("; loss/total 0.03, psnr/anchor 20")  # the metrics of the 4th step
    assert lines[-2].startswith("distill: step 146/150 (97%), 4:48 elapsed, ETA 0:12")
    assert lines[-1] == "distill: step 150/150 done in 5:00, 3 s/step; loss/total 0.99, psnr/anchor 20"
    assert "\r" not in sys.stderr.getvalue() and "%|" not in sys.stderr.getvalue()  # no bar (log lines may be there)


def test_interval_is_capped_at_30_s_and_short_loops_stay_quiet(fake_clock, caplog, monkeypatch):
    monkeypatch.setenv("FOURD_PROGRESS_EVERY_S", "600")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="stages.common.logs")
    for _ in progress(range(40), desc="4DM sampling"):
        fake_clock.now += 7.0
    lines = progress_lines(caplog)
    assert len(lines) == 40 * 7 // 35  # every 5th step (35 s ≥ 30 s), the end line in place of the 8th
    assert "step 5/40" in lines[0] and "ETA 4:05" in lines[0]
    assert MAX_PROGRESS_EVERY_S == 30.0
    caplog.clear()
    for _ in progress(range(5), desc="short"):
        fake_clock.now += 1.0
    assert progress_lines(caplog) == []


def test_fast_loops_report_items_per_second_and_bad_settings_fall_back(fake_clock, caplog, monkeypatch):
    monkeypatch.setenv("FOURD_PROGRESS_EVERY_S", "ten")
    caplog.set_level(logging.INFO, logger="stages.common.logs")
    for _ in Progress(range(1280), desc="frames", unit="frame", tty=False):
        fake_clock.now += 1 / 64
    lines = progress_lines(caplog)
    assert "not a number of seconds" in lines[0]
    assert lines[1] == "frames: frame 640/1280 (50%), 0:10 elapsed, ETA 0:10, 64 frames/s"
    assert lines[2] == "frames: frame 1280/1280 done in 0:20, 64 frames/s"
    assert len(lines) == 3


def test_on_a_terminal_it_is_a_tqdm_bar_with_the_metrics(fake_clock, caplog, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    caplog.set_level(logging.INFO, logger="stages.common.logs")
    steps = progress(range(3), desc="distill")
    for _ in steps:
        fake_clock.now += 60.0
        steps.set_postfix({"loss/total": 0.5})
    text = sys.stderr.getvalue()
    assert re.search(r"distill: .*\| 0/3 .*loss/total=0\.5", text), text
    assert progress_lines(caplog) == []


def test_repeated_third_party_warnings_are_dropped_and_others_kept():
    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    quiet_third_party()
    quiet_third_party()  # idempotent: one filter per logger
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    imports = logging.getLogger("transformers.utils.import_utils")
    keep = Keep()
    for logger in (modeling, imports):
        logger.addHandler(keep)  # the libraries' own handlers may not propagate to the root
    try:
        assert sum(type(f).__name__ == "_DropRecords" for f in modeling.filters) == 1
        modeling.warning("Cannot initialize model with low cpu memory usage because `accelerate` was not found in the")
        modeling.warning("There are modules in FourDMUNet that should be kept in float32: []. Casting directly …")
        modeling.warning("There are modules in X that should be kept in float32: ['norm']. Casting directly …")
        imports.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to `…Pil`")
        imports.warning("something else")
    finally:
        for logger in (modeling, imports):
            logger.removeHandler(keep)
    assert keep.messages == [
        "There are modules in X that should be kept in float32: ['norm']. Casting directly …",
        "something else",
    ]
