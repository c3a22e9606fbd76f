"""Typed schedules: values that change with the training step (house style §8.5; replaces threestudio's `C()`).

threestudio writes `[start_step, start_value, end_value, end_step]` as a positional list whose meaning depends on
the types (an int end step is steps, a float is epochs). Here every schedule is a named, validated object.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from stages.common.config import SubConfig

__all__ = ["LinearSchedule", "ResolutionSchedule"]


class LinearSchedule(SubConfig):
    """`start_value` until `start_step`, then linear to `end_value` at `end_step`, then constant.

    threestudio's `[s0, v0, v1, s1]` is `LinearSchedule(start_step=s0, end_step=s1, start_value=v0, end_value=v1)`;
    a constant is `start_value == end_value`.
    """

    start_step: int = Field(0, ge=0)
    """Step at which the ramp starts."""
    end_step: int = Field(0, ge=0)
    """Step at which the ramp reaches `end_value` (≥ start_step)."""
    start_value: float
    """Value up to `start_step`."""
    end_value: float
    """Value from `end_step` on."""

    @model_validator(mode="after")
    def _ordered(self) -> LinearSchedule:
        if self.end_step < self.start_step:
            raise ValueError(f"end_step {self.end_step} is before start_step {self.start_step}")
        return self

    @classmethod
    def constant(cls, value: float) -> LinearSchedule:
        return cls(start_value=value, end_value=value)

    def __call__(self, step: int) -> float:
        if step <= self.start_step:
            return self.start_value
        if step >= self.end_step:
            return self.end_value
        frac = (step - self.start_step) / (self.end_step - self.start_step)
        return self.start_value + frac * (self.end_value - self.start_value)


class ResolutionSchedule(SubConfig):
    """Piecewise-constant render size: `sizes_px[i]` from `milestones[i-1]` (inclusive) to `milestones[i]`."""

    milestones: list[int] = [5000, 10000]
    """Steps at which the size changes, increasing (spec §1.4: 5000, 10000)."""
    sizes_px: list[int] = [64, 192, 256]
    """Render sides, one more than milestones (spec §1.4: 64, 192, 256)."""

    @model_validator(mode="after")
    def _consistent(self) -> ResolutionSchedule:
        if len(self.sizes_px) != len(self.milestones) + 1:
            raise ValueError("sizes_px needs exactly one more entry than milestones")
        if sorted(self.milestones) != self.milestones or any(s < 1 for s in self.sizes_px):
            raise ValueError("milestones must increase and sizes be positive")
        return self

    def __call__(self, step: int) -> int:
        return self.sizes_px[sum(step >= m for m in self.milestones)]
