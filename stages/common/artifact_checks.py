"""Does an artifact hold what its manifest says? Sizes, counts, frame indices and cameras, checked on load.

`Manifest.load` runs `check_artifact` after the schema and the file list: an upstream folder whose manifest says
64 px while its frames are 256 px, or 4 views while `cameras.json` has 3, is refused with one line naming the
first mismatch, never optimised against for minutes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from stages.common.errors import StageError

__all__ = ["check_artifact"]


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not a readable image ({err})") from None


def _check_frames(directory: Path, paths: list[Path], width: int, height: int, what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise StageError(f"{directory}: {what} {path.relative_to(directory)} is missing")
        size = _image_size(path)
        if size != (width, height):
            raise StageError(
                f"{path}: {size[0]}x{size[1]} px, but the manifest says {what} are {width}x{height} px (size_px)"
            )


def _check_indices(directory: Path, indices: list[int], num_frames: int, what: str) -> None:
    if len(indices) != num_frames:
        raise StageError(f"{directory}: {what} has {len(indices)} source_indices for num_frames {num_frames}")
    if len(set(indices)) != len(indices) or any(i < 0 for i in indices):
        raise StageError(f"{directory}: {what} source_indices {indices} are not distinct frame numbers")


def _check_views(directory: Path, views: Any, what: str) -> None:
    _check_indices(directory, views.source_indices, views.num_frames, what)
    cameras_path = directory / views.cameras_file
    try:
        cameras = json.loads(cameras_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageError(f"{cameras_path}: not readable cameras ({err})") from None
    if not isinstance(cameras, list) or len(cameras) != views.num_views:
        count = len(cameras) if isinstance(cameras, list) else "no list of"
        raise StageError(f"{cameras_path}: {count} cameras, but the manifest says {what} has {views.num_views} views")
    paths = [views.frame_path(directory, v, f) for v in range(views.num_views) for f in range(views.num_frames)]
    _check_frames(directory, paths, views.size_px, views.size_px, what)


def check_artifact(manifest: Any, directory: Path) -> None:
    """Raise if the files of `directory` contradict `manifest` (only image headers and cameras.json are read).

    `manifest` is one of `stages.common.artifacts`' manifests, told apart by its `schema_id` (that module calls
    this one, so this one does not import it).

    Raises:
        StageError: the first mismatch: a frame's size, a frame or camera count, source indices.
    """
    directory = Path(directory)
    kind = manifest.schema_id.split("/")[0]
    if kind == "fourd.preprocess":
        _check_indices(directory, manifest.source_indices, manifest.num_frames, "the preprocessed clip")
        if manifest.source_indices and manifest.source_indices[-1] >= manifest.source_num_frames:
            raise StageError(
                f"{directory}: source index {manifest.source_indices[-1]} is past the source's "
                f"{manifest.source_num_frames} frames"
            )
        paths = manifest.frame_paths(directory)
        _check_frames(directory, paths, manifest.size_px, manifest.size_px, "the frames")
    elif kind == "fourd.mvgen":
        _check_views(directory, manifest.views, "the mvgen views")
    elif kind == "fourd.distill":
        _check_views(directory, manifest.renders, "the distill renders")
    elif kind == "fourd.render":
        _check_views(directory, manifest.gt, "the ground-truth views")
