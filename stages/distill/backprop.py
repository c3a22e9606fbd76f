"""How a training step's renders pass their gradients to the field: directly, or deferred chunk by chunk.

The strategy is chosen once per trainer (`build_backprop`: `runtime.grad_chunk_samples` 0 is direct), so every
training phase is written once against the `Backprop` interface:

    view = backprop.render(cameras, times, size, kind="sds")   # view.rgb (N, 3), view.opacity (N,)
    reached = backprop.backward(view, [loss terms of view.rgb / view.opacity], phase="sds")
    term, reached = backprop.orientation(cameras, times, size, weight)
    reached = backprop.finish(total)                           # at the end of the step

- `DirectBackprop`: every render keeps its autograd graph and the step's total loss is back-propagated once, at the
  end. The field's autograd memory grows with the image size.
- `DeferredBackprop`: every render is made without autograd and its pixels are leaves. `backward` turns the phase's
  loss into pixel gradients and hands them to `DeferredRender.backward`, which re-evaluates the samples in chunks of
  whole rays and back-propagates each chunk into the field, so that memory is bounded by the chunk.

Both make the same random draws and use the same samples; the gradients agree within float tolerance (sums in
another order; tests/distill/test_trainer_deferred.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from stages.common.cameras import OrbitCamera
from stages.distill.config import DistillRuntime
from stages.distill.losses import orientation_loss
from stages.distill.renderer import DeferredRender, RenderOutput

__all__ = ["Backprop", "DirectBackprop", "DeferredBackprop", "PixelRender", "Renders", "build_backprop"]

PhaseTimer = Callable[[str], AbstractContextManager[None]]
"""Times a named part of the iteration (`Trainer._phase`)."""


@dataclass
class PixelRender:
    """A stratified render's pixels, rays ordered (time, camera, row, column).

    Attributes:
        rgb: (N, 3) colour in [0, 1] over the background; in the autograd graph (direct) or a leaf (deferred).
        opacity: (N,) in [0, 1], like rgb.
        deferred: the samples that `DeferredBackprop.backward` re-evaluates (None on the direct path).
    """

    rgb: Tensor
    opacity: Tensor
    deferred: DeferredRender | None = None


class Renders(Protocol):
    """What the strategies render with (`Trainer.render`, `Trainer.render_deferred`)."""

    def render(
        self,
        cameras: list[OrbitCamera],
        times: list[float],
        size: int,
        *,
        stratified: bool,
        with_orient: bool = False,
        with_rgb: bool = True,
        kind: str = "render",
    ) -> RenderOutput: ...

    def render_deferred(
        self,
        cameras: list[OrbitCamera],
        times: list[float],
        size: int,
        *,
        stratified: bool,
        with_rgb: bool = True,
        kind: str = "render",
    ) -> DeferredRender: ...


class Backprop(Protocol):
    def render(self, cameras: list[OrbitCamera], times: list[float], size: int, *, kind: str) -> PixelRender:
        """Render every (time, camera) pair with colour, stratified; sample counts go to `render_stats[kind]`."""
        ...

    def backward(self, view: PixelRender, terms: list[Tensor], *, phase: str) -> bool:
        """Pass the gradients of `Σ terms` (losses of `view`'s pixels) on towards the field; whether any reached it
        now (the direct path's reach it at `finish`)."""
        ...

    def orientation(
        self, cameras: list[OrbitCamera], times: list[float], size: int, weight: float
    ) -> tuple[Tensor, bool]:
        """The orientation term (losses.orientation_loss) of a stratified density-only render, its gradient scaled by
        `weight`; and whether a gradient already reached the field."""
        ...

    def finish_batch(self, term: Tensor) -> bool:
        """A term rendered with autograd whatever the strategy (a small ray batch: the reconstruction term): the
        direct path adds it to the total back-propagated in `finish`; the deferred one back-propagates it now.
        Whether a gradient already reached the field."""
        ...

    def finish(self, total: Tensor) -> bool:
        """End of the step: back-propagate what is still pending; whether a gradient reached the field."""
        ...


class DirectBackprop:
    """Autograd through every render; one backward of the step's total loss in `finish`."""

    def __init__(self, renders: Renders) -> None:
        self.renders = renders

    def render(self, cameras: list[OrbitCamera], times: list[float], size: int, *, kind: str) -> PixelRender:
        out = self.renders.render(cameras, times, size, stratified=True, kind=kind)
        assert out.rgb is not None
        return PixelRender(out.rgb, out.opacity)

    def backward(self, view: PixelRender, terms: list[Tensor], *, phase: str) -> bool:
        return False  # the terms are part of the total that `finish` back-propagates

    def orientation(
        self, cameras: list[OrbitCamera], times: list[float], size: int, weight: float
    ) -> tuple[Tensor, bool]:
        out = self.renders.render(
            cameras, times, size, stratified=True, with_orient=True, with_rgb=False, kind="orient"
        )
        assert out.orient is not None
        return orientation_loss(out.orient, out.opacity), False

    def finish_batch(self, term: Tensor) -> bool:
        return False  # part of the total that `finish` back-propagates

    def finish(self, total: Tensor) -> bool:
        if not total.requires_grad:
            return False
        total.backward()
        return True


class DeferredBackprop:
    """Renders without autograd; each phase's pixel gradients go into the field chunk by chunk, right away.

    Args:
        renders: the trainer.
        chunk_samples: samples per autograd chunk of the colour renders (`runtime.grad_chunk_samples`).
        orient_chunk_samples: samples per chunk of the orientation pass (`runtime.orient_chunk_samples`).
        timer: times the pixel and field backward passes.
    """

    def __init__(self, renders: Renders, *, chunk_samples: int, orient_chunk_samples: int, timer: PhaseTimer) -> None:
        self.renders, self.timer = renders, timer
        self.chunk_samples, self.orient_chunk_samples = chunk_samples, orient_chunk_samples

    def render(self, cameras: list[OrbitCamera], times: list[float], size: int, *, kind: str) -> PixelRender:
        out = self.renders.render_deferred(cameras, times, size, stratified=True, kind=kind)
        assert out.rgb is not None
        # Leaves: the losses' gradients land here, then `backward` carries them into the field.
        return PixelRender(out.rgb.requires_grad_(True), out.opacity.requires_grad_(True), out)

    def backward(self, view: PixelRender, terms: list[Tensor], *, phase: str) -> bool:
        if not terms:
            return False
        loss = terms[0]
        for term in terms[1:]:
            loss = loss + term
        if not loss.requires_grad:
            return False
        with self.timer(f"{phase}_pixel_backward"):
            loss.backward()
        g_rgb, g_opacity = view.rgb.grad, view.opacity.grad

        def chunk_loss(out: RenderOutput, rays: slice) -> Tensor:
            """The chunk's share of J^T g: its pixels times their gradients."""
            assert out.rgb is not None
            total = out.rgb.new_zeros(())
            if g_rgb is not None:
                total = total + (out.rgb * g_rgb[rays]).sum()
            if g_opacity is not None:
                total = total + (out.opacity * g_opacity[rays]).sum()
            return total

        assert view.deferred is not None
        with self.timer(f"{phase}_field_backward"):
            view.deferred.backward(chunk_loss, chunk_samples=self.chunk_samples)
        return True

    def orientation(
        self, cameras: list[OrbitCamera], times: list[float], size: int, weight: float
    ) -> tuple[Tensor, bool]:
        normals = self.renders.render_deferred(cameras, times, size, stratified=True, with_rgb=False, kind="orient")
        # The denominator of orientation_loss, from the whole render: each chunk's term is its share of the sum.
        count = (normals.opacity > 0).sum().clamp(min=1)
        parts: list[Tensor] = []

        def orient_chunk(out: RenderOutput, rays: slice) -> Tensor:
            assert out.orient is not None
            part = out.orient.sum() / count
            parts.append(part.detach())
            return weight * part

        normals.backward(orient_chunk, chunk_samples=self.orient_chunk_samples, with_orient=True)
        term = torch.stack(parts).sum() if parts else normals.opacity.new_zeros(())
        return term, bool(parts)

    def finish_batch(self, term: Tensor) -> bool:
        if not term.requires_grad:
            return False
        term.backward()
        return True

    def finish(self, total: Tensor) -> bool:
        return False  # every phase's gradients reached the field in `backward` / `orientation`


def build_backprop(runtime: DistillRuntime, renders: Renders, timer: PhaseTimer) -> Backprop:
    """Deferred when `runtime.grad_chunk_samples` > 0, else direct."""
    if runtime.grad_chunk_samples > 0:
        return DeferredBackprop(
            renders,
            chunk_samples=runtime.grad_chunk_samples,
            orient_chunk_samples=runtime.orient_chunk_samples,
            timer=timer,
        )
    return DirectBackprop(renders)
