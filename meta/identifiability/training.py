"""Training many randomly started predictors on one masked-prediction task.

Two phases, both full batch: Adam on all restarts at once (the restarts' losses are
independent, so the gradient of their sum is each restart's own and Adam's elementwise steps
are those of separate runs), then L-BFGS on each restart alone, which drives a restart that is
in the basin of an optimum to it within float64 rounding, so that "reached the optimum" and
"recovered the parameters" can be told apart from "not yet converged".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from maskpolicy.tasks.tractable.masked_hmm import (
    HMM,
    HMMPredictor,
    MaskedPredictionData,
    MaskedPredictionTask,
    masked_prediction_loss,
)

LBFGS_ITERATIONS = 50   # inner iterations of one L-BFGS step


@dataclass(frozen=True)
class Fit:
    """The trained restarts and their final losses ``Float64[R]``."""

    predictor: HMMPredictor
    losses: Tensor


def fit_restarts(model: HMM, task: MaskedPredictionTask, data: MaskedPredictionData, restarts: int,
                 adam_steps: int, lr: float, lbfgs_steps: int, generator: torch.Generator,
                 stationary_start: bool = False) -> Fit:
    """``restarts`` random starts (logits standard normal; Gaussian means at the data's scale), trained on ``data``.

    ``stationary_start`` ties each predictor's initial distribution to its transition (see :class:`HMMPredictor`).
    """
    n_outputs = model.n_symbols if model.kind == "discrete" else model.dim
    init_scale = 1.0 if model.kind == "discrete" else float(data.values.std())
    predictor = HMMPredictor(model.kind, model.n_states, n_outputs, restarts, generator, init_scale,
                             getattr(model, "noise_std", 1.0), stationary_start)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=lr)
    for _ in range(adam_steps):
        optimizer.zero_grad(set_to_none=True)
        masked_prediction_loss(predictor(), task, data).sum().backward()
        optimizer.step()
    for restart in range(restarts):
        _polish(predictor, restart, task, data, lbfgs_steps)
    with torch.no_grad():
        return Fit(predictor, masked_prediction_loss(predictor(), task, data))


def _polish(predictor: HMMPredictor, restart: int, task: MaskedPredictionTask, data: MaskedPredictionData,
            steps: int) -> None:
    """L-BFGS (strong Wolfe line search) on one restart's parameters, the others held fixed."""
    if steps == 0:
        return
    own = [nn.Parameter(p.detach()[restart].clone()) for p in predictor.parameters()]
    single = HMMPredictor(predictor.kind, predictor.initial_logits.shape[1], predictor.emission_params.shape[2], 1,
                          torch.Generator().manual_seed(0), noise_std=predictor.noise_std,
                          stationary_start=predictor.stationary_start)
    with torch.no_grad():
        for target, value in zip(single.parameters(), own, strict=True):
            target.copy_(value[None])
    optimizer = torch.optim.LBFGS(single.parameters(), lr=1.0, max_iter=LBFGS_ITERATIONS, history_size=50,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = masked_prediction_loss(single(), task, data).sum()
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    with torch.no_grad():
        for target, value in zip(predictor.parameters(), single.parameters(), strict=True):
            target[restart] = value[0]
