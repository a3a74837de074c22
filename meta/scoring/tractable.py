"""Training a tractable model by cumulative masked prediction (the paper's PPCA result).

Fits PPCA by gradient ascent on one of three objectives and compares each fit with the
closed-form maximum-likelihood solution by its *exact* log marginal likelihood:

* ``exact``       log p(x), the ground truth objective;
* ``cumulative``  the unbiased stratified estimate of Σ_m S_m(x), fresh masks every step;
* ``fixed_rate``  D·S_m(x) at one rate, a biased estimate of log p(x) whose maximiser
  is still the true model (every masked conditional is a proper scoring rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from maskpolicy.meta.scoring.estimate import estimate_mll
from maskpolicy.meta.scoring.estimators import Exhaustive, FixedRate, Stratified
from maskpolicy.tasks.tractable.ppca import PPCA, maximum_likelihood

Objective = Literal["exact", "cumulative", "fixed_rate"]
OBJECTIVES: tuple[Objective, ...] = ("exact", "cumulative", "fixed_rate")


@dataclass(frozen=True)
class PPCAFit:
    objective: Objective
    model: PPCA
    exact_lml: float  # Σ_rows log p(x) under the fitted model
    ml_lml: float  # the same for the closed-form maximum-likelihood model
    steps: int

    @property
    def relative_gap(self) -> float:
        return abs(self.exact_lml - self.ml_lml) / abs(self.ml_lml)


def fit_ppca(
    data: Tensor,
    latent: int,
    objective: Objective = "cumulative",
    steps: int = 1500,
    learning_rate: float = 0.05,
    passes: int = 2,
    rate: float = 0.15,
    seed: int = 0,
) -> PPCAFit:
    """Fits mean, W and σ by Adam on ``objective``; ``passes`` masks per row and step for the estimates.

    Starts from mean 0, small random W and σ = 1, whatever the objective.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    generator = torch.Generator().manual_seed(seed)
    dim = data.shape[1]
    mean = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    loadings = (0.1 * torch.randn(dim, latent, generator=generator, dtype=torch.float64)).requires_grad_()
    log_noise = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([mean, loadings, log_noise], lr=learning_rate)
    # a decaying step size lets the stochastic objectives settle instead of hovering around the optimum
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    estimator = Stratified(passes) if objective == "cumulative" else FixedRate(rate, passes)
    for _ in range(steps):
        model = PPCA(mean, loadings, log_noise)
        if objective == "exact":
            value = model.log_likelihood(data).mean()
        else:
            value = estimate_mll(model.masked_log_probs, data, estimator=estimator, generator=generator
                                 ).per_sequence.mean()
        optimizer.zero_grad()
        (-value).backward()
        optimizer.step()
        schedule.step()
    fitted = PPCA(mean, loadings, log_noise).detached()
    best = maximum_likelihood(data, latent)
    return PPCAFit(objective, fitted, float(fitted.log_likelihood(data).sum()),
                   float(best.log_likelihood(data).sum()), steps)


@dataclass(frozen=True)
class FixedRateBias:
    """How far D·S_m sits from log p(x), measured two ways (totals over the data, nats).

    ``measured`` = D·S_m − log p(x); ``predicted`` = Σ_k (S_m − S_k) from the exact
    per-rate curve. They agree exactly when S is computed over all masks.
    """

    size: int
    fixed_rate_estimate: float
    exact_lml: float
    measured: float
    predicted: float


def fixed_rate_bias(model: PPCA, data: Tensor, rate: float = 0.15) -> FixedRateBias:
    """The fixed-rate bias of ``model`` on ``data``, with exact S_k from all masks (small D)."""
    exact = float(model.log_likelihood(data).sum())
    curve = estimate_mll(model.masked_log_probs, data, estimator=Exhaustive())
    size = FixedRate(rate).masked_count(data.shape[1])
    per_rate = torch.tensor(curve.curve.values, dtype=torch.float64) * len(data)  # totals of S_k over rows
    fixed = estimate_mll(model.masked_log_probs, data, estimator=FixedRate(rate, passes=math.comb(data.shape[1], size)))
    predicted = float((per_rate[size - 1] - per_rate).sum())
    return FixedRateBias(size, fixed.total, exact, fixed.total - exact, predicted)
