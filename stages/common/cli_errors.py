"""Command-line mistakes as one line: tyro's error boxes become a StageError (`error: …`, exit 1)."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from collections.abc import Iterator
from typing import NoReturn

from stages.common.errors import StageError

__all__ = ["ArgumentParser", "flag_errors_as_stage_error", "one_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PYDANTIC = re.compile(r"\s*\[type=[\w.]+, input_value=(.*?), input_type=\w+\]")
_PYDANTIC_URL = re.compile(r"\s*For further information visit \S+")
_VALIDATION = re.compile(r"^Error parsing (\S+): \d+ validation errors? for \w+ (\w+) (.*)$")


def one_line(box: str) -> str:
    """The message of a tyro error box in one line: its first section, with the suggested flag if there is one.

    E.g. `Unrecognized options: --sise-px, 3 (did you mean --size-px?)` or
    `--field.blob-density: Input should be a finite number (got nan)`.
    """
    sections: list[list[str]] = [[]]
    title = None
    for raw in _ANSI.sub("", box).splitlines():
        line = raw.strip()
        if line.startswith(("╭", "╰")):  # the top (with the title) and bottom borders of a UTF-8 box
            title = title or line.strip("╭╮─ ")
            continue
        line = line.removeprefix("│").removesuffix("│").strip()
        if line and set(line) <= set("─-"):  # a horizontal rule: the next section
            sections.append([])
        elif line:
            sections[-1].append(line)
    if title is None:  # the ASCII box (stdout not UTF-8): a title line, a rule, then the sections
        title = " ".join(sections[0])
        sections = sections[1:] or [[]]
    first = " ".join(sections[0]) if sections[0] else title
    first = _PYDANTIC_URL.sub("", _PYDANTIC.sub(r" (got \1)", first))
    m = _VALIDATION.match(first)
    if m:
        prefix = "" if m.group(1)[:1].isupper() else f"{m.group(1)}."  # a class name: a top-level field
        flag = f"--{prefix}{m.group(2)}".replace("_", "-")
        first = f"{flag}: {m.group(3)}"
    first = first.removeprefix("Error parsing ")
    suggestion = ""
    rest = [line for section in sections[1:] for line in section]
    if "Perhaps you meant:" in rest:
        after = rest[rest.index("Perhaps you meant:") + 1 :]
        flags = [line.split()[0] for line in after if line.startswith("--")]
        suggestion = f" (did you mean {flags[0]}?)" if flags else ""
    return (first or title or "bad command line") + suggestion


@contextlib.contextmanager
def flag_errors_as_stage_error(help_hint: str) -> Iterator[None]:
    """Run a tyro parse with its error output captured; a rejected command line raises StageError (one line).

    Args:
        help_hint: appended to the message, e.g. `run python -m stages.preprocess --help`.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise StageError(f"{one_line(captured.getvalue()).rstrip('.')}; {help_hint}") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad flag reported as one `error:` line and exit status 1 (argparse's own: usage, exit 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(1)
