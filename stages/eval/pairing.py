"""Pair predicted views with ground-truth views by camera and frames by input-video frame index (spec §6).

File order never matters: view v of the prediction is scored against the ground-truth view whose camera has
the same azimuth and elevation (within a tolerance), and frame f against the ground-truth frame that shows the
same input-video frame (`ViewSet.source_indices`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.artifacts import ViewSet
from stages.common.cameras import OrbitCamera, load_cameras
from stages.common.errors import StageError
from stages.common.image_io import composite_on_white, read_rgba

__all__ = ["EvalPairs", "angle_diff_deg", "pair_views", "pair_frames", "pair_view_sets", "load_frames"]

log = logging.getLogger(__name__)

_FOV_TOLERANCE_DEG = 0.5
_RADIUS_REL_TOLERANCE = 0.01


@dataclass(frozen=True)
class EvalPairs:
    """Which prediction image is scored against which ground-truth image."""

    views: list[tuple[OrbitCamera, OrbitCamera]]
    """(prediction camera, ground-truth camera), in prediction view order."""
    unpaired_ground_truth: list[OrbitCamera]
    """Ground-truth views no prediction view shows (not scored)."""
    frames: list[tuple[int, int, int]]
    """(prediction frame, ground-truth frame, input-video frame), in time order."""


def angle_diff_deg(a: float, b: float) -> float:
    """Smallest absolute difference of two angles, degrees in [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _describe(cam: OrbitCamera) -> str:
    return f"view {cam.view} (azimuth {cam.azimuth_deg:g}°, elevation {cam.elevation_deg:g}°)"


def _check_cameras(cameras: list[OrbitCamera], num_views: int, source: str) -> dict[int, OrbitCamera]:
    by_view = {c.view: c for c in cameras}
    if len(by_view) != len(cameras) or set(by_view) != set(range(num_views)):
        raise StageError(
            f"{source}: cameras list views {sorted(c.view for c in cameras)}, expected each of 0..{num_views - 1} once"
        )
    return by_view


def same_direction(a: OrbitCamera, b: OrbitCamera, tolerance_deg: float) -> bool:
    """Whether two cameras look from the same azimuth and elevation, within `tolerance_deg` each."""
    return (
        angle_diff_deg(a.azimuth_deg, b.azimuth_deg) <= tolerance_deg
        and abs(a.elevation_deg - b.elevation_deg) <= tolerance_deg
    )


def pair_views(
    prediction: list[OrbitCamera], ground_truth: list[OrbitCamera], tolerance_deg: float
) -> list[tuple[OrbitCamera, OrbitCamera]]:
    """Pair every prediction camera with the one ground-truth camera at the same azimuth and elevation.

    Ground-truth views that no prediction view shows are left out (the render stage may add novel views
    beyond the 4 orthogonal ones); every prediction view must find its partner.

    Raises:
        StageError: a prediction view has no partner or several, or two share one.
    """
    pairs = []
    gt_text = ", ".join(_describe(c) for c in ground_truth)
    for cam in sorted(prediction, key=lambda c: c.view):
        matches = [g for g in ground_truth if same_direction(cam, g, tolerance_deg)]
        if not matches:
            raise StageError(
                f"prediction {_describe(cam)} has no ground-truth view within {tolerance_deg:g}°; "
                f"ground truth has {gt_text}"
            )
        if len(matches) > 1:
            raise StageError(
                f"prediction {_describe(cam)} matches several ground-truth views within {tolerance_deg:g}°: "
                + ", ".join(_describe(g) for g in matches)
            )
        pairs.append((cam, matches[0]))
    used = [g.view for _, g in pairs]
    if len(set(used)) != len(used):
        raise StageError(f"two prediction views pair with the same ground-truth view ({used}); lower the tolerance")
    unpaired = [g for g in ground_truth if g.view not in used]
    if unpaired:
        # The render stage may add novel views beyond the 4 orthogonal ones that mvgen predicts.
        log.info("ground-truth views without a prediction, not scored: %s", ", ".join(map(_describe, unpaired)))
    for cam, gt in pairs:
        if abs(cam.fov_y_deg - gt.fov_y_deg) > _FOV_TOLERANCE_DEG or (
            abs(cam.radius - gt.radius) > _RADIUS_REL_TOLERANCE * max(abs(gt.radius), 1e-9)
        ):
            log.warning(
                "prediction view %d (fov %.3g°, radius %.3g) and ground-truth view %d (fov %.3g°, radius %.3g) "
                "frame the object differently: pixel metrics will penalise it",
                cam.view,
                cam.fov_y_deg,
                cam.radius,
                gt.view,
                gt.fov_y_deg,
                gt.radius,
            )
    return pairs


def pair_frames(prediction: list[int], ground_truth: list[int]) -> list[tuple[int, int, int]]:
    """Pair frames by the input-video frame they show; the ground truth may hold more frames than scored.

    Args:
        prediction: `source_indices` of the prediction (one per prediction frame).
        ground_truth: `source_indices` of the ground truth.

    Returns:
        (prediction frame, ground-truth frame, source index), sorted by source index (time order).

    Raises:
        StageError: duplicated indices, or prediction frames whose instant the ground truth does not show.
    """
    for name, indices in (("prediction", prediction), ("ground truth", ground_truth)):
        if len(set(indices)) != len(indices):
            raise StageError(f"{name} source_indices repeat a frame: {indices}")
    if not prediction:
        raise StageError("the prediction has no frames")
    gt_frame = {s: j for j, s in enumerate(ground_truth)}
    missing = [s for s in prediction if s not in gt_frame]
    if missing:
        raise StageError(
            f"prediction frames show input frames {missing} that the ground truth does not have "
            f"(ground-truth source_indices: {ground_truth})"
        )
    return sorted(((i, gt_frame[s], s) for i, s in enumerate(prediction)), key=lambda t: t[2])


def _load_view_cameras(directory: Path, views: ViewSet, source: str) -> list[OrbitCamera]:
    path = Path(directory) / views.cameras_file
    try:
        cameras = load_cameras(path)
    except (OSError, ValueError) as err:
        raise StageError(f"{source}: cannot read {path} ({err})") from None
    return list(_check_cameras(cameras, views.num_views, str(path)).values())


def pair_view_sets(
    prediction_dir: Path, prediction: ViewSet, ground_truth_dir: Path, ground_truth: ViewSet, tolerance_deg: float
) -> EvalPairs:
    """Read both `cameras.json` files and pair views by camera, frames by source index.

    Raises:
        StageError: anything that keeps the two sets from being paired one-to-one.
    """
    for name, views in (("prediction", prediction), ("ground truth", ground_truth)):
        if len(views.source_indices) != views.num_frames:
            raise StageError(
                f"{name}: {len(views.source_indices)} source_indices for {views.num_frames} frames in its manifest"
            )
    pred_cams = _load_view_cameras(prediction_dir, prediction, "prediction")
    gt_cams = _load_view_cameras(ground_truth_dir, ground_truth, "ground truth")
    views = pair_views(pred_cams, gt_cams, tolerance_deg)
    used = {g.view for _, g in views}
    return EvalPairs(
        views=views,
        unpaired_ground_truth=[g for g in gt_cams if g.view not in used],
        frames=pair_frames(prediction.source_indices, ground_truth.source_indices),
    )


def load_frames(directory: Path, views: ViewSet, view_frames: list[tuple[int, list[int]]]) -> np.ndarray:
    """Read RGBA frames and composite them on white (the paper's protocol).

    Args:
        directory: the artifact folder.
        views: its view set.
        view_frames: `[(view, [frame, ...]), ...]`, the images to read, in output order.

    Returns:
        uint8 (V, F, H, W, 3) RGB on white, H = W = `views.size_px`.

    Raises:
        StageError: an image is missing, unreadable or not `size_px` square.
    """
    out = []
    for view, frames in view_frames:
        row = []
        for frame in frames:
            path = views.frame_path(directory, view, frame)
            rgba = read_rgba(path)
            if rgba.shape[:2] != (views.size_px, views.size_px):
                raise StageError(
                    f"{path} is {rgba.shape[1]}×{rgba.shape[0]} px; its manifest says {views.size_px}² (size_px)"
                )
            row.append(composite_on_white(rgba))
        out.append(np.stack(row))
    return np.stack(out)
