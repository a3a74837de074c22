"""The sweeper: ask the study for trials, launch a run per trial, tell the study how each ended.

A launched run reports to its trial through the study's storage (see :mod:`maskpolicy.meta.search.sweep`), so
the study's pruner can stop it; the run then ends with ``optuna.TrialPruned`` and the trial is told pruned.
While a batch runs the sweeper beats for its trials (a database storage), so a sweeper killed mid-batch leaves
trials that the next start fails and runs again (their parameters queued, at most ``max_retry`` times) before any
new one; every start counts the running trials of other sweepers on the same study, so the study ends holding
exactly ``n_trials`` finished trials; ``max_consecutive_failures`` runs in a row that fail stop the sweep.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from maskpolicy.meta.config import plain
from maskpolicy.meta.results.files import write_json
from maskpolicy.meta.search.engines import build_pruner, build_sampler, open_storage, open_study
from maskpolicy.meta.search.faults import (
    FAILURE_ATTR,
    SURPLUS_ATTR,
    FailureGuard,
    Heartbeat,
    TrialBudget,
    clear_stop,
    fail_stale,
)
from maskpolicy.meta.search.progress import TrialProgress
from maskpolicy.meta.search.sweep import PRUNER_ATTR, SweepError, SweepSpace, config_node, link_overrides, parse_sweep

log = logging.getLogger(__name__)


class MaskpolicyOptunaSweeper(Sweeper):
    """Runs ``n_trials`` trials of one Optuna study, ``n_jobs`` at a time, through the configured Hydra launcher."""

    def __init__(self, sampler: Any, pruner: Any, storage: str | None, study_name: str, n_trials: int, n_jobs: int,
                 seed: int, max_consecutive_failures: int, heartbeat_interval: int | None, grace_period: int | None,
                 max_retry: int | None, pruning_start_fraction: float, params: Mapping[str, str]) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_trials and n_jobs must be at least 1, got {n_trials} and {n_jobs}")
        if max_consecutive_failures < 0:
            raise SweepError("hydra.sweeper.max_consecutive_failures must be 0 (never stop) or a number of runs, got "
                             f"{max_consecutive_failures}")
        self.sampler_node, self.pruner_node = config_node("sampler", sampler), config_node("pruner", pruner)
        self.storage, self.study_name, self.seed = storage, study_name, seed
        self.n_trials, self.n_jobs, self.max_consecutive_failures = n_trials, n_jobs, max_consecutive_failures
        self.heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                          "max_retry": max_retry}
        self.start_fraction, self.params = pruning_start_fraction, dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                 task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        space = parse_sweep([*arguments, *(f"{key}={value}" for key, value in self.params.items())])
        if not space.distributions:
            raise SweepError("nothing to sweep: give at least one sweep override, e.g. 'policy=choice(random,entity)' "
                             "or 'policy.rate=interval(0.1,0.4)'")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        location = str(self.storage or (sweep_dir / "study.db").resolve())
        study = self._open_study(location)
        offset = self._finetune_offset(space)
        progress = TrialProgress(self.n_trials, describe=lambda trial: " ".join(space.overrides(trial.params)[
            len(space.fixed):]))
        guard = FailureGuard(self.max_consecutive_failures, "hydra.sweeper.max_consecutive_failures",
                             f"in its directory under {sweep_dir}")
        budget, returns, waited = TrialBudget(study, self.n_trials), [], False
        while not budget.done(budget.counts()):
            guard.check(study)
            fail_stale(study)  # a killed sweeper's trials: failed, their parameters queued again (run first)
            counts = budget.counts()
            room = self.n_trials - counts.finished - (len(counts.running) if budget.exact else 0)
            if room <= 0:  # another sweeper's runs fill the budget: wait for them (or for their heartbeat to stop)
                if not waited:
                    log.info("waiting for %d running trials: another sweeper's, or a killed sweeper's until their "
                             "heartbeat is %s s old", len(counts.running), self.heartbeat["grace_period"])
                waited = True
                budget.wait()
                continue
            with warnings.catch_warnings():  # ask-and-tell on a heartbeat storage: the sweeper beats itself
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
                trials = [study.ask(space.distributions) for _ in range(min(self.n_jobs, room))]
            trials = [trial for trial in trials if not _surplus(study, budget, trial)]
            with Heartbeat(study, [trial._trial_id for trial in trials]):
                for run in _consecutive(trials):
                    batch = [space.overrides(trial.params) + link_overrides(location, self.study_name, trial.number,
                                                                            offset, self.start_fraction)
                             for trial in run]
                    self.validate_batch_is_legal(batch)
                    results = self.launcher.launch(batch, initial_job_idx=run[0].number)  # run directory = trial
                    returns.append(results)
                    for trial, result in zip(run, results, strict=True):
                        _tell(study, trial, result)
                        progress(study, study.get_trials(deepcopy=False)[trial.number])
            for trial in trials:  # every run of the batch told first: a stop leaves none running
                guard(study, study.get_trials(deepcopy=False)[trial.number])
        write_json(sweep_dir / "sweep.json", _summary(study, location))
        progress.summary(study)
        return returns

    def _open_study(self, location: str) -> optuna.Study:
        if location in ("", ":memory:"):
            raise SweepError("hydra.sweeper.storage=':memory:' cannot work: each launched run reports to its trial "
                             "through the storage; use null (study.db in the sweep directory) or a database URL")
        storage = open_storage(location, **self.heartbeat)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from TrialProgress instead
        study = open_study(storage, self.study_name, direction="maximize",
                           sampler=build_sampler(self.sampler_node, self.seed), pruner=build_pruner(self.pruner_node))
        study.set_user_attr(PRUNER_ATTR, plain(self.pruner_node))
        clear_stop(study)
        return study

    def _finetune_offset(self, space: SweepSpace) -> int:
        """Fine-tuning epochs are reported after the longest pre-training any trial can draw (one step axis)."""
        return int(max(self.config.pretrain.steps, space.largest("pretrain.steps") or 0)) + 1


def _surplus(study: optuna.Study, budget: TrialBudget, trial: optuna.Trial) -> bool:
    """A trial another sweeper's ask made one too many is recorded as surplus (failed, never run)."""
    if not budget.surplus(trial.number):
        return False
    trial.set_user_attr(SURPLUS_ATTR, True)
    study.tell(trial, state=TrialState.FAIL)
    return True


def _consecutive(trials: Sequence[optuna.Trial]) -> list[list[optuna.Trial]]:
    """The batch cut where trial numbers jump, so that each launch numbers its jobs (and run directories) by trial."""
    runs: list[list[optuna.Trial]] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> None:
    """Tells the study how the run ended (a failed run keeps its error in the trial's ``failure``)."""
    raised = result._return_value if result.status == JobStatus.FAILED else None
    if isinstance(raised, optuna.TrialPruned):
        study.tell(trial, state=TrialState.PRUNED)
        return
    if raised is not None:
        trial.set_user_attr(FAILURE_ATTR, f"{type(raised).__name__}: {raised}")
        study.tell(trial, state=TrialState.FAIL)
        log.error("trial %d failed: %s: %s", trial.number, type(raised).__name__, raised)
        return
    value = result.return_value
    if not isinstance(value, int | float) or not math.isfinite(value):
        trial.set_user_attr(FAILURE_ATTR, f"SweepError: the run returned {value!r}, not a finite number")
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, float(value))


def _summary(study: optuna.Study, location: str) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {"study_name": study.study_name, "storage": location, "objective": "dev_em", "direction": "maximize",
            "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState
                       if any(t.state == state for t in trials)},
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params}}
