"""The flow command line's error handling (one `error:` line and exit status 1, checked before Prefect starts), and
the lock that serialises the creation of a local MLflow store."""

from __future__ import annotations

import argparse
import fcntl
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from flows.workspace import WorkspaceError, check_name, config_set_files, find_repo, subjects

__all__ = ["ArgumentParser", "check_arguments", "fail", "store_lock"]


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
    repo: str | None, videos: Sequence[str], names: Sequence[str], config_set: str, *, single: bool
) -> None:
    """Refuse what is wrong before a flow run starts: the checkout, the config set, subject names, missing videos.

    Args:
        repo: the `--repo` flag (None: this checkout).
        videos: the `--video` flags.
        names: the `--subject` flags (with one video in single mode, the name to register it under).
        config_set: the `--config-set` flag.
        single: one subject (`fourd`): a `--subject` without `--video` must already be in params.yaml.

    Raises:
        WorkspaceError: the first problem found, naming it.
    """
    root = find_repo(repo)
    config_set_files(root, config_set)
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


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the `flock` beside a local SQLite MLflow store that the stages take too (`stages/common/tracking.py`):
    flows and stages starting at once never create and migrate a new store twice. Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
