"""One model × one task × one predictor start of the identifiability experiment: train, read off, judge; summaries."""

from __future__ import annotations

import logging
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from maskpolicy.meta.cores import share_cores
from maskpolicy.meta.identifiability.claims import (
    STATIONARY,
    UNNUMBERED,
    UNNUMBERED_SOURCE,
    claim_for,
    conditions_hold,
)
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
from maskpolicy.meta.results.schema import IdentifyCell, IdentifySummary, RestartRecord
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
    lbfgs_iterations: int
    loss_tolerance: float
    recovery_tolerance: float
    heldout_rows: int
    seed: int


def measure_cell(model_name: str, model: HMM, task: MaskedPredictionTask, settings: Settings,
                 start: str = STATIONARY, model_seed: int | None = None) -> IdentifyCell:
    """Trains ``settings.restarts`` predictors of ``task`` on ``model``'s data and judges whether they identify it.

    On population data a restart at the optimum must recover the true parameters; on samples
    the optimum is not the truth, so it must agree with the best restart instead. The held-out
    check scores every restart on fresh rows with exact targets: a restart at the optimum of its
    training rows that is not at the optimum there was fitted to too few rows.
    """
    started = time.perf_counter()
    data = masked_prediction_data(model, task, settings.data, settings.n_samples,
                                  torch.Generator().manual_seed(settings.seed))
    fit = fit_restarts(model, task, data, settings.restarts, settings.adam_steps, settings.lr,
                       settings.lbfgs_iterations, torch.Generator().manual_seed(settings.seed + 1), start == STATIONARY)
    with torch.no_grad():
        optimum = min(float(masked_prediction_loss(model.parameters(), task, data)[0]), float(fit.losses.min()))
        heldout = _heldout_excess(model, task, settings, fit.predictor)
    params = fit.predictor()
    excess = [float(loss) - optimum for loss in fit.losses]
    reached = [value <= settings.loss_tolerance for value in excess]
    against_truth = recover(true_parameters(model), params)
    best = int(fit.losses.argmin())
    against_best = recover(tuple(tensor[best].detach() for tensor in read_parameters(params)), params)
    judged = against_truth if settings.data == "population" else against_best
    cell_verdict = verdict(reached, [r.error for r in judged], settings.recovery_tolerance)
    at_optimum = [r.error for r, ok in zip(against_truth, reached, strict=True) if ok]
    heldout_at_optimum = [h for h, ok in zip(heldout, reached, strict=True) if ok and h is not None]
    claim = claim_for(model.kind, task, start)
    holds = None if claim is None else conditions_hold(claim, model.conditions())
    agrees = None if claim is None or not holds or cell_verdict == INCONCLUSIVE else (
        claim.identifiable == (cell_verdict == IDENTIFIED))
    cell = IdentifyCell(
        model=model_name, task=task.name, patterns=task.label, verdict=cell_verdict, reached=sum(reached),
        error_mean=statistics.fmean(at_optimum) if at_optimum else None,
        error_std=statistics.pstdev(at_optimum) if at_optimum else None,
        error_max=max(at_optimum) if at_optimum else None, optimal_loss=optimum,
        seconds=round(time.perf_counter() - started, 2),
        restarts=[_restart(loss, gap, ok, truth, other, out) for loss, gap, ok, truth, other, out in
                  zip(fit.losses.tolist(), excess, reached, against_truth, against_best, heldout, strict=True)],
        paper_statement=None if claim is None else claim.statement,
        paper_says_identifiable=None if claim is None else claim.identifiable, conditions_hold=holds,
        agrees_with_paper=agrees, seed=model_seed, start=start,
        paper_source=None if claim is None else claim.source.label,
        paper_number=None if claim is None else claim.source.number,
        paper_basis=None if claim is None else claim.basis,
        paper_verified=None if claim is None else claim.verified,
        heldout_excess_max=max(heldout_at_optimum) if heldout_at_optimum else None)
    return cell


def log_cell(cell: IdentifyCell) -> None:
    """One line for a measured cell: its verdict, how many restarts reached the optimum, their recovery error."""
    errors = "n/a" if cell.error_mean is None else (
        f"{cell.error_mean:.2e} ± {cell.error_std:.2e} (max {cell.error_max:.2e})")
    paper = "" if cell.agrees_with_paper is None else (
        f"; {'agrees' if cell.agrees_with_paper else 'DISAGREES'} with the paper")
    log.info("%s HMM (seed %s, %s start), task %s (%s): %s — %d/%d restarts at the optimum, recovery error %s%s",
             cell.model, cell.seed, cell.start, cell.task, cell.patterns, cell.verdict, cell.reached,
             len(cell.restarts), errors, paper)


Cell = tuple[str, HMM, MaskedPredictionTask, str, int | None]   # model name, model, task, start, model seed


def measure_cells(cells: Sequence[Cell], settings: Settings, processes: int = 1) -> list[IdentifyCell]:
    """Every cell, in order, ``processes`` at a time (1: in this process), a line for each as it ends.

    The processes share the cores (:func:`~maskpolicy.meta.cores.share_cores`: one torch thread each on a machine
    with as many cores as processes).

    Each cell seeds its own data and starts, so running them side by side changes only thread counts (and with
    them float rounding), not what is computed.
    """
    if processes <= 1 or len(cells) <= 1:
        measured = []
        for name, model, task, start, seed in cells:
            measured.append(measure_cell(name, model, task, settings, start, seed))
            log_cell(measured[-1])
        return measured
    workers = min(processes, len(cells))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=share_cores,
                             initargs=(workers,)) as pool:
        futures = {pool.submit(measure_cell, name, model, task, settings, start, seed): index
                   for index, (name, model, task, start, seed) in enumerate(cells)}
        done: dict[int, IdentifyCell] = {}
        for future in as_completed(futures):
            done[futures[future]] = future.result()  # re-raises a cell's error here
            log_cell(done[futures[future]])
    return [done[index] for index in range(len(cells))]


def _heldout_excess(model: HMM, task: MaskedPredictionTask, settings: Settings, predictor) -> list[float | None]:
    """Each restart's loss minus the truth's on ``heldout_rows`` fresh rows with exact targets (None: nothing to hold
    out — a discrete model's training data is then its exact population)."""
    if settings.heldout_rows == 0 or (model.kind == "discrete" and settings.data == "population"):
        return [None] * settings.restarts
    fresh = masked_prediction_data(model, task, "population", settings.heldout_rows,
                                   torch.Generator().manual_seed(settings.seed + 2))
    truth = float(masked_prediction_loss(model.parameters(), task, fresh)[0])
    return [float(loss) - truth for loss in masked_prediction_loss(predictor(), task, fresh)]


def _restart(loss: float, excess: float, reached: bool, truth: Recovery, best: Recovery,
             heldout: float | None) -> RestartRecord:
    return RestartRecord(loss=loss, excess_loss=excess, reached_optimum=reached, initial_error=truth.initial_error,
                         transition_error=truth.transition_error, emission_error=truth.emission_error,
                         error=truth.error, disagreement=best.error, heldout_excess_loss=heldout)


def summarise(cells: list[IdentifyCell]) -> list[IdentifySummary]:
    """Per model family × task × start, over its seeds: the verdicts' counts and how many agree with the paper."""
    groups: dict[tuple[str, str, str | None], list[IdentifyCell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.task, cell.start), []).append(cell)
    summaries = []
    for (model, task, start), group in groups.items():
        first = next((cell for cell in group if cell.paper_says_identifiable is not None), group[0])
        label = None if first.paper_basis is None else (first.paper_number or UNNUMBERED) if (
            first.paper_basis == "stated") else f"follows from {first.paper_number or UNNUMBERED_SOURCE}"
        summaries.append(IdentifySummary(
            model=model, task=task, patterns=group[0].patterns, start=start or STATIONARY, models=len(group),
            verdicts=dict(Counter(cell.verdict for cell in group)), reached=[cell.reached for cell in group],
            paper_says_identifiable=first.paper_says_identifiable, paper_label=label,
            applies=sum(bool(cell.conditions_hold) for cell in group),
            agree=sum(cell.agrees_with_paper is True for cell in group),
            disagree=sum(cell.agrees_with_paper is False for cell in group)))
    return summaries
