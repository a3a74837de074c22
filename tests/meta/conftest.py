"""Fixtures of the meta tests: typed run records made by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maskpolicy.meta.results.schema import (
    Downstream,
    MLLScore,
    ModelRecord,
    Named,
    PolicyRecord,
    PretrainResults,
    PretrainStats,
    RateCurveRecord,
)


@pytest.fixture
def make_run() -> Callable[..., PretrainResults]:
    """``make_run(dev, test, mll, seconds=10.0, seed=1)``: a pre-training run's results with those scores."""

    def build(dev: float, test: float | None, mll: float | None, seconds: float = 10.0, seed: int = 1
              ) -> PretrainResults:
        score = None if mll is None else MLLScore("stratified", mll * 50, 0.1, mll, mll / 0.693, "mean", 64, 4, 200,
                                                  RateCurveRecord([0.5, 1.0], [mll, mll]))
        return PretrainResults(PolicyRecord("entity", {}), Named("bioworld", {}), ModelRecord("tiny_bert", {}, 10),
                               seed, Downstream(dev, dev, 3, test, test), PretrainStats(10, 1000, 150, 2.0), score,
                               seconds)

    return build
