"""Content hashes of a stage's inputs: what ties a resumable checkpoint to the very run that wrote it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["inputs_sha256"]

_CHUNK = 1 << 20


def _file_digest(path: Path, h: hashlib._Hash) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def inputs_sha256(paths: Iterable[Path]) -> str:
    """SHA-256 over every file under `paths` (folders recursively): relative names, sizes and bytes, in order.

    A missing path contributes its name only, so "absent" is a state of its own. Symlinks are followed (a
    workspace links its weights folders), so the hash is that of the content a stage actually reads.
    """
    h = hashlib.sha256()
    for index, root in enumerate(Path(p) for p in paths):
        h.update(f"\0input {index}\0".encode())
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(f for f in root.rglob("*") if f.is_file())
        else:
            h.update(b"\0absent\0")
            continue
        for f in files:
            rel = f.relative_to(root).as_posix() if f != root else ""
            h.update(f"\0{rel}\0{f.stat().st_size}\0".encode())
            _file_digest(f, h)
    return h.hexdigest()
