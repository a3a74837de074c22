"""Masking-rate schedules: exact rates along training, mixtures, bad input."""

from __future__ import annotations

import math

import pytest

from maskpolicy.policies import EntityPolicy, MixturePolicy, PolicyError, RandomPolicy, RateSchedule, set_rate


@pytest.mark.parametrize(("kind", "expected"), [
    ("constant", [0.2, 0.2, 0.2, 0.2, 0.2]),
    ("linear", [0.3, 0.2625, 0.225, 0.1875, 0.15]),
    ("cosine", [0.3, 0.15 + 0.15 * (1 + math.cos(math.pi / 4)) / 2, 0.225,
                0.15 + 0.15 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.15]),
    ("step", [0.3, 0.3, 0.15, 0.15, 0.15]),
])
def test_rates_along_training(kind, expected):
    schedule = RateSchedule(kind, start=0.3, end=0.15)
    assert [schedule.rate_at(step, 5, base_rate=0.2) for step in range(5)] == pytest.approx(expected)


def test_unset_ends_are_the_policy_rate_and_the_end_holds_after_the_schedule():
    schedule = RateSchedule("linear", start=0.4, steps=3)
    assert [schedule.rate_at(step, 10, base_rate=0.1) for step in (0, 1, 2, 3, 9)] == pytest.approx(
        [0.4, 0.25, 0.1, 0.1, 0.1])


def test_a_step_past_the_end_keeps_the_last_rate():
    schedule = RateSchedule("linear", start=0.3, end=0.15)
    assert schedule.rate_at(50, 10, 0.15) == schedule.rate_at(9, 10, 0.15) == pytest.approx(0.15)


def test_set_rate_reaches_every_mixture_component():
    mixture = MixturePolicy({"entity": EntityPolicy(0.15), "random": RandomPolicy(0.15)})
    set_rate(mixture, 0.3)
    assert [component.rate for component in mixture.components] == [0.3, 0.3]


def test_a_policy_without_a_rate_cannot_follow_a_schedule():
    class Fixed:
        def select(self, batch, generator): ...

    with pytest.raises(PolicyError, match="no `rate` attribute.*remove policy.schedule"):
        set_rate(Fixed(), 0.2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "linear", "start": 1.5}, r"start is a masking rate and must be in \(0, 1\]"),
    ({"kind": "linear", "end": 0.0}, r"end is a masking rate"),
    ({"kind": "linear", "end": -0.1}, r"end is a masking rate"),
    ({"kind": "step", "at": 1.0}, r"at is a fraction"),
    ({"kind": "linear", "steps": 0}, r"steps is the schedule's length and must be ≥ 1"),
    ({"kind": "exponential"}, r"kind must be one of constant, linear, cosine, step"),
])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(PolicyError, match=message):
        RateSchedule(**kwargs)


def test_a_schedule_needs_training_steps():
    with pytest.raises(PolicyError, match="positive number of training steps"):
        RateSchedule("linear", 0.3, 0.15).rate_at(0, 0, 0.15)
