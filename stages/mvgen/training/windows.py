"""The window sampler: which clip, frames and views a training window holds (paper §3.2), as indices.

A window is F frames at a stride from a random start of a clip, a conditioning view m of the clip's ring, and the 4
orthogonal views b, b + V/4, b + V/2, b + 3V/4 of an independent random b, with cameras relative to m (m sits at
azimuth 0, as at inference). `data.*` (config.py) chooses how the clip and stride are drawn and whether windows are
the demo's kind (front view in). Both data paths draw through `draw_window`: from disk (`dataset.py`) and from memory
(`bank.py`), so one config and seed give one sequence of windows whichever path reads the pixels.

The draw order (every draw from the one CPU generator): [focus: rand] → clip ([subject: randint], randint) → start
(randint) → [time reversal: rand] → m (randint) → b (randint).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from stages.common.errors import StageError

__all__ = ["ClipTable", "Window", "WindowSpec", "clip_stride", "draw_window", "front_view"]


@dataclass(frozen=True)
class ClipTable:
    """What the sampler needs to know of the clips: per clip its frames, ring views and subject (caption index)."""

    num_frames: list[int]
    num_views: list[int]
    subjects: list[int]
    names: list[str]

    @cached_property
    def by_subject(self) -> list[list[int]]:
        """The clips of each subject, subjects in index order."""
        return [[c for c, s in enumerate(self.subjects) if s == k] for k in range(max(self.subjects) + 1)]


@dataclass(frozen=True)
class WindowSpec:
    """`data.*` of a TrainConfig as the sampler reads it (`focus_clip` as a clip index, or None)."""

    num_frames: int
    frame_stride: int
    stride: str = "exact"
    balance: str = "clip"
    time_reversal: bool = False
    focus_clip: int | None = None
    focus_fraction: float = 0.0
    front_view_only: bool = False
    any_base: bool = False
    focus_any_base: bool = False

    @classmethod
    def from_config(cls, data, names: list[str]) -> WindowSpec:  # noqa: ANN001  (a DataConfig)
        """Raises StageError when `data.focus_clip` is not among `names`."""
        if data.focus_clip and data.focus_clip not in names:
            raise StageError(f"focus_clip {data.focus_clip!r} is not among the training clips: {names}")
        return cls(
            num_frames=data.num_frames,
            frame_stride=data.frame_stride,
            stride=data.stride,
            balance=data.balance,
            time_reversal=data.time_reversal,
            focus_clip=names.index(data.focus_clip) if data.focus_clip else None,
            focus_fraction=data.focus_fraction,
            front_view_only=data.front_view_only,
            any_base=data.front_view_any_base,
            focus_any_base=data.focus_any_base,
        )


@dataclass(frozen=True)
class Window:
    """One window: clip index, frame indices (in playing order), conditioning view, the 4 views, their azimuths
    relative to the conditioning view (degrees)."""

    clip: int
    frames: list[int]
    mono: int
    ring: list[int]
    azimuths: list[float]


def front_view(num_views: int) -> int:
    """The ring view nearest azimuth 0 (the input camera), rings being at −180° + 360°·k / num_views."""
    return min(range(num_views), key=lambda v: abs(((-180.0 + 360.0 * v / num_views) + 180.0) % 360.0 - 180.0))


def clip_stride(num_frames_clip: int, window: int, max_stride: int) -> int:
    """The largest stride ≤ `max_stride` whose window of `window` frames fits a clip of `num_frames_clip` frames."""
    return max(1, min(max_stride, (num_frames_clip - 1) // (window - 1)))


def _randint(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def draw_window(clips: ClipTable, spec: WindowSpec, generator: torch.Generator, aligned: bool = False) -> Window:
    """Draw one window (all randomness from `generator`, in the module docstring's order).

    `aligned`: the 4 views start at the conditioning view (0/90/180/270° from it, as at inference: sample grids).

    Raises:
        StageError: the clip is too short for `num_frames` at an exact `frame_stride`.
    """
    focus = spec.focus_clip is not None and bool(torch.rand(1, generator=generator) < spec.focus_fraction)
    if focus:
        c = spec.focus_clip
    elif spec.balance == "subject":
        group = clips.by_subject[_randint(len(clips.by_subject), generator)]
        c = group[_randint(len(group), generator)]
    else:
        c = _randint(len(clips.num_frames), generator)
    n, nv = clips.num_frames[c], clips.num_views[c]
    stride = spec.frame_stride if spec.stride == "exact" else clip_stride(n, spec.num_frames, spec.frame_stride)
    span = (spec.num_frames - 1) * stride + 1
    if n < span:
        raise StageError(f"clip {clips.names[c]} has {n} frames; {spec.num_frames} at stride {stride} need {span}")
    start = _randint(n - span + 1, generator)
    frames = [start + k * stride for k in range(spec.num_frames)]
    if spec.time_reversal and bool(torch.rand(1, generator=generator) < 0.5):
        frames = frames[::-1]
    mono = _randint(nv, generator)
    base = _randint(nv, generator)
    if aligned:
        base = mono
    if focus or spec.front_view_only:
        mono = front_view(nv)
        if not (spec.focus_any_base if focus else spec.any_base):
            base = mono
    ring = [(base + k * (nv // 4)) % nv for k in range(4)]
    return Window(c, frames, mono, ring, [((v - mono) * 360.0 / nv) % 360.0 for v in ring])
