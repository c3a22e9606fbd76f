"""The flow command line's error handling: one `error:` line and exit status 1, checked before Prefect starts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from flows.pipelines import PipelineError, pipeline_file
from flows.workspace import WorkspaceError, check_name, find_repo, subjects

__all__ = ["ArgumentParser", "check_arguments", "fail"]


def fail(message: str) -> NoReturn:
    """Print `error: <message>` (its first line) to stderr and exit with status 1."""
    first = (str(message).strip().splitlines() or ["failed"])[0]
    print(f"error: {first}", file=sys.stderr)
    raise SystemExit(1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad flag reported as one `error:` line and exit status 1 (argparse's own: usage, exit 2)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see {self.prog} --help")


def check_arguments(
    repo: str | None,
    videos: Sequence[str],
    names: Sequence[str],
    config_set: str,
    *,
    single: bool,
    auto_config_set: str = "auto",
) -> None:
    """Refuse what is wrong before a flow run starts: the checkout, the config set, subject names, missing videos.

    Args:
        repo: the `--repo` flag (None: this checkout).
        videos: the `--video` flags.
        names: the `--subject` flags (with one video in single mode, the name to register it under).
        config_set: the `--config-set` flag.
        single: one subject (`fourd`): a `--subject` without `--video` must already be in params.yaml.
        auto_config_set: the `--config-set` value that picks a set by the installed weights.

    Raises:
        WorkspaceError: the first problem found, naming it.
    """
    root = find_repo(repo)
    if config_set != auto_config_set:
        try:
            pipeline_file(config_set)
        except PipelineError as exc:
            raise WorkspaceError(str(exc)) from None
    for name in names:
        check_name("subject", name)
    for video in videos:
        if not Path(video).expanduser().exists():
            raise WorkspaceError(f"video {video} does not exist")
    registered = subjects(root)
    pending = names if not videos or not single else []
    unknown = [n for n in pending if n not in registered]
    if unknown:
        raise WorkspaceError(f"subject {unknown[0]!r} is not in params.yaml (have {sorted(registered)})")
    if not videos and not names:
        raise WorkspaceError("give a video to register (--video), or the subject name of one in params.yaml")
