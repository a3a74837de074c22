"""Training many randomly started predictors on one masked-prediction task.

Two phases, both full batch and both over all restarts at once: Adam (the restarts' losses are
independent, so the gradient of their sum is each restart's own and Adam's elementwise steps
are those of separate runs), then L-BFGS, batched the same way — every restart keeps its own
curvature history and its own backtracking (Armijo) line search, so a restart polished among
others takes the steps it would take alone. L-BFGS drives a restart that is in the basin of an
optimum to it within float64 rounding, so that "reached the optimum" and "recovered the
parameters" can be told apart from "not yet converged".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from maskpolicy.tasks.tractable.masked_hmm import (
    HMM,
    HMMPredictor,
    MaskedPredictionData,
    MaskedPredictionTask,
    masked_prediction_loss,
)

HISTORY = 20            # curvature pairs L-BFGS keeps per restart
ARMIJO = 1e-4           # sufficient decrease of a step: f(x + t d) ≤ f(x) + ARMIJO · t · ∇f·d
BACKTRACKS = 12         # halvings of the step before L-BFGS forgets its history (or, without one, stops)
GRADIENT_TOLERANCE = 1e-13   # max |∇f| at which a restart has converged
ROUNDING = 1e-16        # a predicted decrease below ROUNDING · (1 + |f|) is float64 noise: the restart has converged


@dataclass(frozen=True)
class Fit:
    """The trained restarts and their final losses ``Float64[R]``."""

    predictor: HMMPredictor
    losses: Tensor


def fit_restarts(model: HMM, task: MaskedPredictionTask, data: MaskedPredictionData, restarts: int,
                 adam_steps: int, lr: float, lbfgs_iterations: int, generator: torch.Generator,
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
    polish(predictor, lambda: masked_prediction_loss(predictor(), task, data), lbfgs_iterations)
    with torch.no_grad():
        return Fit(predictor, masked_prediction_loss(predictor(), task, data))


def polish(predictor: HMMPredictor, losses: Callable[[], Tensor], iterations: int) -> None:
    """Batched L-BFGS on ``predictor``'s restarts in place; ``losses()`` gives ``[R]`` at its current parameters.

    Each restart stops when its gradient vanishes (``GRADIENT_TOLERANCE``) or no step along its
    search direction decreases its loss (float64 rounding reached); the others go on.
    """
    if iterations == 0:
        return
    params = list(predictor.parameters())
    restarts = params[0].shape[0]
    sizes = [p[0].numel() for p in params]

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            for p, chunk in zip(params, x.split(sizes, dim=1), strict=True):
                p.copy_(chunk.view(p.shape))
        for p in params:
            p.grad = None
        loss = losses()
        loss.sum().backward()
        # a parameter the loss does not use (the free start under a stationary one) has no gradient: zero
        return loss.detach(), torch.cat(
            [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(restarts, -1) for p in params], dim=1)

    x = torch.cat([p.detach().reshape(restarts, -1) for p in params], dim=1)
    f, g = evaluate(x)
    history = _History(restarts, x.shape[1], x.dtype)
    done = ~torch.isfinite(f) | (g.abs().amax(1) <= GRADIENT_TOLERANCE)
    for _ in range(iterations):
        direction = -history.apply(g)
        slope = (g * direction).sum(1)
        uphill = ~(slope < 0)
        direction[uphill] = -g[uphill]
        slope = (g * direction).sum(1)
        done = done | (-slope <= ROUNDING * (1 + f.abs()))
        if done.all():
            break
        step = torch.where(history.empty, (1.0 / g.abs().sum(1).clamp(min=1e-300)).clamp(max=1.0),
                           torch.ones_like(f))
        accepted = done.clone()
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        for _ in range(BACKTRACKS):
            trial = torch.where(accepted[:, None], x_new, x + step[:, None] * direction)
            f_trial, g_trial = evaluate(trial)
            ok = ~accepted & torch.isfinite(f_trial) & (f_trial <= f + ARMIJO * step * slope)
            x_new[ok], f_new[ok], g_new[ok] = trial[ok], f_trial[ok], g_trial[ok]
            accepted |= ok
            if accepted.all():
                break
            step = torch.where(accepted, step, step / 2)
        moved = accepted & ~done
        history.push(x_new - x, g_new - g, moved)
        stuck = ~accepted
        done = done | (stuck & history.empty) | (g_new.abs().amax(1) <= GRADIENT_TOLERANCE)
        history.forget(stuck)
        x, f, g = x_new, f_new, g_new
        if done.all():
            break
    with torch.no_grad():
        for p, chunk in zip(params, x.split(sizes, dim=1), strict=True):
            p.copy_(chunk.view(p.shape))
        for p in params:
            p.grad = None


class _History:
    """Each restart's last ``HISTORY`` curvature pairs ``(s, y)``, oldest first; empty slots are zero."""

    def __init__(self, restarts: int, size: int, dtype: torch.dtype) -> None:
        self.s = torch.zeros(restarts, HISTORY, size, dtype=dtype)
        self.y = torch.zeros_like(self.s)
        self.rho = torch.zeros(restarts, HISTORY, dtype=dtype)
        self.gamma = torch.ones(restarts, dtype=dtype)
        self.empty = torch.ones(restarts, dtype=torch.bool)

    def push(self, s: Tensor, y: Tensor, rows: Tensor) -> None:
        """Adds the pairs of ``rows`` whose curvature ``s·y`` is positive (a descent pair L-BFGS can use)."""
        sy, yy = (s * y).sum(1), (y * y).sum(1)
        rows = rows & (sy > 1e-12 * s.norm(dim=1) * y.norm(dim=1)) & (sy > 0)
        keep = rows[:, None, None]
        self.s = torch.where(keep, torch.cat([self.s[:, 1:], s[:, None]], 1), self.s)
        self.y = torch.where(keep, torch.cat([self.y[:, 1:], y[:, None]], 1), self.y)
        self.rho = torch.where(rows[:, None], torch.cat([self.rho[:, 1:], (1 / sy.where(rows, 1.0))[:, None]], 1),
                               self.rho)
        self.gamma = torch.where(rows, sy / yy.where(rows, 1.0), self.gamma)
        self.empty = self.empty & ~rows

    def forget(self, rows: Tensor) -> None:
        """Drops the history of ``rows`` (its direction found no decrease): the next step is steepest descent."""
        self.s = torch.where(rows[:, None, None], 0.0, self.s)
        self.y = torch.where(rows[:, None, None], 0.0, self.y)
        self.rho = torch.where(rows[:, None], 0.0, self.rho)
        self.gamma = torch.where(rows, 1.0, self.gamma)
        self.empty = self.empty | rows

    def apply(self, g: Tensor) -> Tensor:
        """The inverse-Hessian estimate times ``g`` per restart (the two-loop recursion)."""
        q = g.clone()
        alpha = []
        for i in range(HISTORY - 1, -1, -1):
            a = self.rho[:, i] * (self.s[:, i] * q).sum(1)
            alpha.append(a)
            q = q - a[:, None] * self.y[:, i]
        r = self.gamma[:, None] * q
        for i, a in zip(range(HISTORY), reversed(alpha), strict=True):
            b = self.rho[:, i] * (self.y[:, i] * r).sum(1)
            r = r + self.s[:, i] * (a - b)[:, None]
        return r
