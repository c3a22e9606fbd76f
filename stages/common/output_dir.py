"""The atomic output directory every stage writes into (`staged_output_dir`), and the cleanup of killed writers.

A stage writes into a hidden staging directory beside its output, `.<name>.staging-<id>`, and only a finished
result replaces the output. The writer holds an advisory `flock` on its staging directory while it exists, so a
later run tells a staging directory whose writer was killed (lock free: removed) from one being written right now
(lock held: left alone). The replacement is one atomic exchange of the two directories (Linux `renameat2` with
`RENAME_EXCHANGE`): readers see the old output or the new one, never no output; the old one is deleted after.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from stages.common.errors import StageError

__all__ = ["staged_output_dir", "remove_stale_staging"]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
"""The file that marks a finished artifact (written last; `stages.common.artifacts.Manifest`)."""
_INIT_GRACE_S = 60.0
"""A `.init-` directory older than this is debris (it lives for the microseconds between mkdir and rename)."""


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (`renameat2(RENAME_EXCHANGE)`); False where the system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def remove_stale_staging(output_dir: Path) -> list[Path]:
    """Remove the staging directories of `output_dir` whose writer is gone (killed); returns what was removed."""
    output_dir = Path(output_dir)
    removed = []
    for path in sorted(output_dir.parent.glob(f".{output_dir.name}.staging-*")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    for path in output_dir.parent.glob(f".{output_dir.name}.init-*"):
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > _INIT_GRACE_S:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    for path in removed:
        log.info("removed %s, left by a run that was killed while writing %s", path, output_dir)
    return removed


@contextlib.contextmanager
def staged_output_dir(output_dir: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces `output_dir` only if the block finishes.

    `output_dir` may be absent, empty, or a previous result of a stage (it has a manifest.json); anything
    else is refused, so a mistyped `--output` never deletes a user's folder. On an exception the staging
    directory is removed and `output_dir` is left untouched. Staging directories of killed runs are removed first.
    """
    output_dir = Path(output_dir)
    if output_dir.exists():
        if not output_dir.is_dir():
            raise StageError(f"output path exists and is not a directory: {output_dir}")
        if any(output_dir.iterdir()) and not (output_dir / MANIFEST_FILE).is_file():
            raise StageError(
                f"output directory {output_dir} is not empty and holds no {MANIFEST_FILE}; "
                "refusing to replace it (choose another --output or empty it)"
            )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir)
    token = uuid.uuid4().hex[:8]
    # Created under another name, locked, then renamed: a staging directory is never seen unlocked by a cleanup.
    init = output_dir.parent / f".{output_dir.name}.init-{token}"
    init.mkdir()
    fd = os.open(init, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        staging = output_dir.parent / f".{output_dir.name}.staging-{token}"
        os.rename(init, staging)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not output_dir.exists():
            os.rename(staging, output_dir)
        elif _exchange(staging, output_dir):
            shutil.rmtree(staging, ignore_errors=True)  # it now holds the old output
        else:  # no atomic exchange here: the old output is moved aside (briefly no output), then deleted
            old = output_dir.parent / f".{output_dir.name}.staging-{token}-old"
            os.replace(output_dir, old)
            os.replace(staging, output_dir)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(fd)
