"""One model × one task of the identifiability experiment: train the restarts, read them off, judge."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch

from maskpolicy.meta.identifiability.claims import claim_for, conditions_hold
from maskpolicy.meta.identifiability.recovery import (
    IDENTIFIED,
    INCONCLUSIVE,
    Recovery,
    read_parameters,
    recover,
    true_parameters,
    verdict,
)
from maskpolicy.meta.identifiability.training import fit_restarts
from maskpolicy.meta.results.schema import IdentifyCell, RestartRecord
from maskpolicy.tasks.tractable.hmm_models import HMM
from maskpolicy.tasks.tractable.masked_hmm import MaskedPredictionTask, masked_prediction_data, masked_prediction_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """How a cell is measured (the ``identify`` config's knobs of the same names)."""

    data: str
    n_samples: int
    restarts: int
    adam_steps: int
    lr: float
    lbfgs_steps: int
    stationary_start: bool
    loss_tolerance: float
    recovery_tolerance: float
    seed: int


def measure_cell(model_name: str, model: HMM, task: MaskedPredictionTask, settings: Settings) -> IdentifyCell:
    """Trains ``settings.restarts`` predictors of ``task`` on ``model``'s data and judges whether they identify it.

    On population data a restart at the optimum must recover the true parameters; on samples
    the optimum is not the truth, so it must agree with the best restart instead.
    """
    started = time.perf_counter()
    data = masked_prediction_data(model, task, settings.data, settings.n_samples,
                                  torch.Generator().manual_seed(settings.seed))
    fit = fit_restarts(model, task, data, settings.restarts, settings.adam_steps, settings.lr, settings.lbfgs_steps,
                       torch.Generator().manual_seed(settings.seed + 1), settings.stationary_start)
    with torch.no_grad():
        optimum = min(float(masked_prediction_loss(model.parameters(), task, data)[0]), float(fit.losses.min()))
    params = fit.predictor()
    excess = [float(loss) - optimum for loss in fit.losses]
    reached = [value <= settings.loss_tolerance for value in excess]
    against_truth = recover(true_parameters(model), params)
    best = int(fit.losses.argmin())
    against_best = recover(tuple(tensor[best].detach() for tensor in read_parameters(params)), params)
    judged = against_truth if settings.data == "population" else against_best
    cell_verdict = verdict(reached, [r.error for r in judged], settings.recovery_tolerance)
    at_optimum = [r.error for r, ok in zip(against_truth, reached, strict=True) if ok]
    claim = claim_for(model.kind, task)
    holds = None if claim is None else conditions_hold(claim, model.conditions())
    agrees = None if claim is None or not holds or cell_verdict == INCONCLUSIVE else (
        claim.identifiable == (cell_verdict == IDENTIFIED))
    cell = IdentifyCell(
        model=model_name, task=task.name, patterns=task.label, verdict=cell_verdict, reached=sum(reached),
        error_mean=statistics.fmean(at_optimum) if at_optimum else None,
        error_std=statistics.pstdev(at_optimum) if at_optimum else None,
        error_max=max(at_optimum) if at_optimum else None, optimal_loss=optimum,
        seconds=round(time.perf_counter() - started, 2),
        restarts=[_restart(loss, gap, ok, truth, other) for loss, gap, ok, truth, other in
                  zip(fit.losses.tolist(), excess, reached, against_truth, against_best, strict=True)],
        paper_statement=None if claim is None else claim.statement,
        paper_says_identifiable=None if claim is None else claim.identifiable, conditions_hold=holds,
        agrees_with_paper=agrees)
    log.info("%s HMM, task %s (%s): %s — %d/%d restarts at the optimum, recovery error %s%s", model_name, task.name,
             task.label, cell_verdict, cell.reached, settings.restarts,
             "n/a" if not at_optimum else f"{cell.error_mean:.2e} ± {cell.error_std:.2e} (max {cell.error_max:.2e})",
             "" if agrees is None else f"; {'agrees' if agrees else 'DISAGREES'} with the paper")
    return cell


def _restart(loss: float, excess: float, reached: bool, truth: Recovery, best: Recovery) -> RestartRecord:
    return RestartRecord(loss=loss, excess_loss=excess, reached_optimum=reached, initial_error=truth.initial_error,
                         transition_error=truth.transition_error, emission_error=truth.emission_error,
                         error=truth.error, disagreement=best.error)
