"""Masking-rate schedules: the rate as a function of training progress (Ankner et al. 2023; Yang et al. 2023).

A schedule is pure: :meth:`RateSchedule.rate_at` maps (step, total steps) to a rate, so a run
resumed at step s masks exactly as the uninterrupted run did. :func:`set_rate` hands the rate to
a policy, which keeps it in its ``rate`` attribute (a mixture passes it to its components).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .base import MaskingPolicy, PolicyError

Kind = Literal["constant", "linear", "cosine", "step"]
KINDS = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class RateSchedule:
    """The masking rate over training.

    Args:
        kind: ``constant`` (the policy's own rate), ``linear`` (start → end), ``cosine`` (start → end along
            half a cosine), ``step`` (start until the fraction ``at`` of training, end after).
        start: the first rate, in (0, 1]; ``None``: the policy's own rate.
        end: the last rate, in (0, 1]; ``None``: the policy's own rate.
        at: for ``step``, the fraction of the schedule at which the rate switches, in (0, 1).
        steps: the schedule's length in optimisation steps (the end rate holds after it); ``None``: all of
            training.
    """

    kind: Kind = "constant"
    start: float | None = None
    end: float | None = None
    at: float = 0.5
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PolicyError(f"policy.schedule.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and not 0.0 < float(value) <= 1.0:
                raise PolicyError(f"policy.schedule.{name} is a masking rate and must be in (0, 1], got {value}; "
                                  "e.g. start=0.30 end=0.15")
        if not 0.0 < float(self.at) < 1.0:
            raise PolicyError(f"policy.schedule.at is a fraction of training and must be in (0, 1), got {self.at}")
        if self.steps is not None and int(self.steps) < 1:
            raise PolicyError(f"policy.schedule.steps is the schedule's length and must be ≥ 1 (or null: all of "
                              f"training), got {self.steps}")

    def rate_at(self, step: int, total_steps: int, base_rate: float) -> float:
        """The rate for optimisation step ``step`` (0-based) of ``total_steps``; ``base_rate`` fills unset ends."""
        if total_steps < 1:
            raise PolicyError(f"a rate schedule needs a positive number of training steps, got {total_steps}")
        start = base_rate if self.start is None else float(self.start)
        end = base_rate if self.end is None else float(self.end)
        length = total_steps if self.steps is None else int(self.steps)
        progress = min(max(step, 0), length - 1) / max(length - 1, 1)
        if self.kind == "constant":
            return base_rate
        if self.kind == "linear":
            return start + (end - start) * progress
        if self.kind == "cosine":
            return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2
        return start if progress < self.at else end

    @property
    def varies(self) -> bool:
        """Whether the rate can change during training."""
        return self.kind != "constant"


def set_rate(policy: MaskingPolicy, rate: float) -> None:
    """Sets the rate a policy masks at (its ``rate`` attribute; a mixture's components' rates)."""
    components = getattr(policy, "components", None)
    if components is not None:
        for component in components:
            set_rate(component, rate)
        return
    if not hasattr(policy, "rate"):
        raise PolicyError(f"{type(policy).__name__} has no `rate` attribute, so a rate schedule cannot drive it; "
                          "remove policy.schedule or give the policy a rate")
    policy.rate = rate
