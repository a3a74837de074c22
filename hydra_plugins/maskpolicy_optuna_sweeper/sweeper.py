"""The sweeper: ask the study for trials, launch a run per trial, tell the study how each ended.

A launched run reports to its trial through the study's storage (see :mod:`maskpolicy.meta.search.sweep`), so
the study's pruner can stop it; the run then ends with ``optuna.TrialPruned`` and the trial is told pruned.
"""

from __future__ import annotations

import logging
import math
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
from maskpolicy.meta.search.engines import build_pruner, build_sampler, open_storage
from maskpolicy.meta.search.progress import TrialProgress
from maskpolicy.meta.search.sweep import PRUNER_ATTR, SweepError, SweepSpace, config_node, link_overrides, parse_sweep

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class MaskpolicyOptunaSweeper(Sweeper):
    """Runs ``n_trials`` trials of one Optuna study, ``n_jobs`` at a time, through the configured Hydra launcher."""

    def __init__(self, sampler: Any, pruner: Any, storage: str | None, study_name: str, n_trials: int, n_jobs: int,
                 seed: int, max_failures: int, pruning_start_fraction: float, params: Mapping[str, str]) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_trials and n_jobs must be at least 1, got {n_trials} and {n_jobs}")
        self.sampler_node, self.pruner_node = config_node("sampler", sampler), config_node("pruner", pruner)
        self.storage, self.study_name, self.seed = storage, study_name, seed
        self.n_trials, self.n_jobs, self.max_failures = n_trials, n_jobs, max_failures
        self.start_fraction, self.params = pruning_start_fraction, dict(params or {})
        self.job_index = 0

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
        returns, failures = [], []
        while (done := len(study.get_trials(deepcopy=False, states=FINISHED))) < self.n_trials:
            trials = [study.ask(space.distributions) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [space.overrides(trial.params) + link_overrides(location, self.study_name, trial.number, offset,
                                                                    self.start_fraction) for trial in trials]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=self.job_index)
            self.job_index += len(batch)
            for trial, result in zip(trials, results, strict=True):
                error = _tell(study, trial, result)
                progress(study, study.get_trials(deepcopy=False)[trial.number])
                if error is not None:
                    failures.append(error)
            returns.append(results)
            if len(failures) >= self.max_failures:
                raise SweepError(f"{len(failures)} runs failed (hydra.sweeper.max_failures={self.max_failures}); "
                                 f"the last: {failures[-1]!r}. Each run's log is in its directory under "
                                 f"{sweep_dir}") from failures[-1]
        write_json(sweep_dir / "sweep.json", _summary(study, location))
        progress.summary(study)
        return returns

    def _open_study(self, location: str) -> optuna.Study:
        if location in ("", ":memory:"):
            raise SweepError("hydra.sweeper.storage=':memory:' cannot work: each launched run reports to its trial "
                             "through the storage; use null (study.db in the sweep directory) or a database URL")
        storage = open_storage(location, heartbeat_interval=None)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from TrialProgress instead
        study = optuna.create_study(storage=storage, study_name=self.study_name, direction="maximize",
                                    sampler=build_sampler(self.sampler_node, self.seed),
                                    pruner=build_pruner(self.pruner_node), load_if_exists=True)
        study.set_user_attr(PRUNER_ATTR, plain(self.pruner_node))
        return study

    def _finetune_offset(self, space: SweepSpace) -> int:
        """Fine-tuning epochs are reported after the longest pre-training any trial can draw (one step axis)."""
        return int(max(self.config.pretrain.steps, space.largest("pretrain.steps") or 0)) + 1


def _tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> BaseException | None:
    """Tells the study how the run ended; returns the run's error when it failed."""
    raised = result._return_value if result.status == JobStatus.FAILED else None
    if isinstance(raised, optuna.TrialPruned):
        study.tell(trial, state=TrialState.PRUNED)
        return None
    if raised is not None:
        trial.set_user_attr("failure", f"{type(raised).__name__}: {raised}")
        study.tell(trial, state=TrialState.FAIL)
        log.error("trial %d failed: %s: %s", trial.number, type(raised).__name__, raised)
        return raised
    value = result.return_value
    if not isinstance(value, int | float) or not math.isfinite(value):
        study.tell(trial, state=TrialState.FAIL)
        return SweepError(f"run of trial {trial.number} returned {value!r}, not a finite number")
    study.tell(trial, float(value))
    return None


def _summary(study: optuna.Study, location: str) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {"study_name": study.study_name, "storage": location, "objective": "dev_em", "direction": "maximize",
            "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState
                       if any(t.state == state for t in trials)},
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params}}
