"""The Optuna sweeper behind ``hydra/sweeper=maskpolicy_optuna``: ask the study for trials, launch a run per trial,
tell the study how each ended.

The Hydra plugin (``hydra_plugins.maskpolicy_optuna_sweeper``) is a thin adapter that imports this module only
when a sweep chooses it. A sweep expression becomes the same space entry a ``maskpolicy-search`` space takes
(:mod:`maskpolicy.meta.search.sweep`), and samplers, pruners, storages, the heartbeat and the failure guard are the
search's own (:mod:`.engines`, :mod:`.faults`). Any Hydra task function can be swept: its return value is the
objective (a list of values: several objectives, ``direction`` one per value). A ``maskpolicy-pretrain`` run also
reports to its trial through the study's storage, so the study's pruner can stop it, and with ``objectives`` it
returns any registered objective's value instead of its dev metric.

While a batch runs the sweeper beats for its trials (a database storage), so a sweeper killed mid-batch leaves
trials that the next start fails and runs again (their parameters queued, at most ``max_retry`` times) before any
new one; every start counts the running trials of other sweepers on the same study, so the study ends holding
exactly ``n_trials`` finished trials; ``max_consecutive_failures`` runs in a row that fail, or a batch whose share
of failures exceeds ``max_failure_rate``, stop the sweep.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from maskpolicy.meta.config import plain
from maskpolicy.meta.results.files import write_json, write_text
from maskpolicy.meta.search.choices import GRID_TARGETS
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
from maskpolicy.meta.search.grid import SharedGridSampler
from maskpolicy.meta.search.objectives import OBJECTIVES, ObjectiveError, resolve
from maskpolicy.meta.search.progress import TrialProgress
from maskpolicy.meta.search.space import SearchSpaceError
from maskpolicy.meta.search.sweep import (
    LINK_KEY,
    PRUNER_ATTR,
    SweepError,
    SweepSpace,
    config_node,
    link_overrides,
    sweep_space,
)

log = logging.getLogger(__name__)


class OptunaSweep(Sweeper):
    """Runs ``n_trials`` trials of one Optuna study, ``n_jobs`` at a time, through the configured Hydra launcher."""

    def __init__(self, sampler: Any, pruner: Any, direction: Any, objectives: Any, storage: str | None,
                 study_name: str, n_trials: int, n_jobs: int, seed: int, max_failure_rate: float | None,
                 max_consecutive_failures: int, heartbeat_interval: int | None, grace_period: int | None,
                 max_retry: int | None, pruning_start_fraction: float, params: Mapping[str, str],
                 custom_search_space: str | None) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_trials and n_jobs must be at least 1, got {n_trials} and {n_jobs}")
        if max_consecutive_failures < 0:
            raise SweepError("hydra.sweeper.max_consecutive_failures must be 0 (never stop) or a number of runs, got "
                             f"{max_consecutive_failures}")
        if max_failure_rate is not None and not 0.0 <= max_failure_rate <= 1.0:
            raise SweepError(f"hydra.sweeper.max_failure_rate is a share of a batch's runs in [0, 1] (or null: "
                             f"unchecked), got {max_failure_rate}")
        self.sampler_node, self.pruner_node = config_node("sampler", sampler), config_node("pruner", pruner)
        self.objectives = sweep_objectives(objectives)
        self.directions = sweep_directions(direction, self.objectives)
        self.storage, self.study_name, self.seed = storage, study_name, seed
        self.n_trials, self.n_jobs, self.max_consecutive_failures = n_trials, n_jobs, max_consecutive_failures
        self.max_failure_rate = max_failure_rate
        self.heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                          "max_retry": max_retry}
        self.start_fraction, self.params = pruning_start_fraction, dict(params or {})
        self.extend_space = custom_space(custom_search_space)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                 task_function=task_function, config=config)
        # a maskpolicy-pretrain run reports to its trial (and can be pruned); any other Hydra app returns its value
        self.linked = LINK_KEY in config
        if self.objectives and not self.linked:
            raise SweepError("hydra.sweeper.objectives names this project's objectives, which only a "
                             "maskpolicy-pretrain run computes; for another Hydra app, return the value (or a list of "
                             "values) from its task function and set hydra.sweeper.direction")

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        space = sweep_space(self.params, arguments)
        if not space.entries:
            raise SweepError("nothing to sweep: give at least one sweep override, e.g. 'policy=choice(random,entity)' "
                             "or 'policy.rate=interval(0.1,0.4)'")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        location = str(self.storage or (sweep_dir / "study.db").resolve())
        study, n_trials = self._open_study(location, space)
        link = self._link(location, space)
        progress = TrialProgress(n_trials, describe=lambda trial: " ".join(
            space.overrides(trial.params)[len(space.fixed):]))
        guard = FailureGuard(self.max_consecutive_failures, "hydra.sweeper.max_consecutive_failures",
                             f"in its directory under {sweep_dir}")
        budget, returns, waited = TrialBudget(study, n_trials), [], False
        while not budget.done(budget.counts()):
            guard.check(study)
            fail_stale(study)  # a killed sweeper's trials: failed, their parameters queued again (run first)
            counts = budget.counts()
            if budget.grid_walked and not (counts.waiting or counts.running):
                break  # every grid point is taken: nothing new to run
            room = n_trials - counts.finished - (len(counts.running) if budget.exact else 0)
            # another sweeper's runs fill the budget (or hold every grid point): wait for them, or for their heartbeat
            if room <= 0 or budget.grid_walked:
                if not waited:
                    log.info("waiting for %d running trials: another sweeper's, or a killed sweeper's until their "
                             "heartbeat is %s s old", len(counts.running), self.heartbeat["grace_period"])
                waited = True
                budget.wait()
                continue
            trials = [trial for trial in self._ask(study, space, min(self.n_jobs, room))
                      if not _surplus(study, budget, trial)]
            with Heartbeat(study, [trial._trial_id for trial in trials]):
                for run in _consecutive(trials):
                    batch = [space.overrides(trial.params) + link(trial.number) for trial in run]
                    self.validate_batch_is_legal(batch)
                    results = self.launcher.launch(batch, initial_job_idx=run[0].number)  # run directory = trial
                    returns.append(results)
                    for trial, result in zip(run, results, strict=True):
                        _tell(study, trial, result, len(self.directions))
                        progress(study, study.get_trials(deepcopy=False)[trial.number])
                    self._check_failure_rate(results)
            for trial in trials:  # every run of the batch told first: a stop leaves none running
                guard(study, study.get_trials(deepcopy=False)[trial.number])
        write_json(sweep_dir / "sweep.json", self._summary(study, location, space))
        write_text(sweep_dir / "optimization_results.yaml", optimization_results(study))
        progress.summary(study)
        return returns

    def _open_study(self, location: str, space: SweepSpace) -> tuple[optuna.Study, int]:
        """The study (created or continued) and the number of finished trials it should hold."""
        if location in ("", ":memory:"):
            raise SweepError("hydra.sweeper.storage=':memory:' cannot work: each launched run reports to its trial "
                             "through the storage; use null (study.db in the sweep directory) or a database URL")
        storage = open_storage(location, **self.heartbeat)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from TrialProgress instead
        sampler, n_trials = self._sampler(space)
        study = open_study(storage, self.study_name, directions=self.directions, sampler=sampler,
                           pruner=build_pruner(self.pruner_node))
        if study.directions != [optuna.study.StudyDirection[d.upper()] for d in self.directions]:
            raise SweepError(f"the study {self.study_name!r} in {location} optimises "
                             f"{[d.name.lower() for d in study.directions]}, not {self.directions}: give its "
                             "direction, or a new hydra.sweeper.study_name")
        study.set_user_attr(PRUNER_ATTR, plain(self.pruner_node))
        clear_stop(study)
        return study, n_trials

    def _sampler(self, space: SweepSpace) -> tuple[optuna.samplers.BaseSampler, int]:
        """The configured sampler, seeded by its own ``seed`` or else ``hydra.sweeper.seed``; a grid sampler gets
        every swept key's grid values and caps the trials at the number of grid points."""
        node = OmegaConf.to_container(self.sampler_node)
        seed = node.pop("seed", None)
        seed = self.seed if seed is None else seed
        if node["_target_"] in GRID_TARGETS:
            try:
                grid = space.grid()
            except SearchSpaceError as error:
                raise SweepError(f"hydra/sweeper/sampler=grid: {error}; sweep it as range(…) or choice(…)") from error
            return SharedGridSampler(grid, seed=seed), min(self.n_trials, math.prod(map(len, grid.values())))
        return build_sampler(OmegaConf.create(node), seed), self.n_trials

    def _ask(self, study: optuna.Study, space: SweepSpace, count: int) -> list[optuna.Trial]:
        """New trials with every swept key drawn, then ``custom_search_space``'s own suggestions."""
        with warnings.catch_warnings():  # ask-and-tell on a heartbeat storage: the sweeper beats itself
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trials = [study.ask() for _ in range(count)]
        for trial in trials:
            space.suggest(trial)
            if self.extend_space is not None:
                self.extend_space(self.config, trial)
        return trials

    def _link(self, location: str, space: SweepSpace) -> Callable[[int], list[str]]:
        """The overrides that tell a maskpolicy-pretrain run which trial it is (none for another app)."""
        if not self.linked:
            return lambda number: []
        # fine-tuning epochs are reported after the longest pre-training any trial can draw (one step axis)
        offset = int(max(self.config.pretrain.steps, space.largest("pretrain.steps") or 0)) + 1
        objectives = self.objectives
        return lambda number: link_overrides(location, self.study_name, number, offset, self.start_fraction,
                                             objectives)

    def _check_failure_rate(self, results: Sequence[JobReturn]) -> None:
        """Stops the sweep with the first failed run's own error when too many of a batch failed."""
        failed = [result for result in results if result.status == JobStatus.FAILED]
        if self.max_failure_rate is None or len(failed) <= self.max_failure_rate * len(results):
            return
        log.error("%d of %d runs failed (hydra.sweeper.max_failure_rate=%s)", len(failed), len(results),
                  self.max_failure_rate)
        failed[0].return_value  # noqa: B018 -- raises the run's own exception, with its traceback

    def _summary(self, study: optuna.Study, location: str, space: SweepSpace) -> dict[str, Any]:
        trials = study.get_trials(deepcopy=False)
        complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
        best = study.best_trial if complete and len(self.directions) == 1 else None
        return {"study_name": study.study_name, "storage": location,
                "objectives": list(self.objectives) or None, "directions": self.directions,
                "space": space.entries,  # the same entries a maskpolicy-search space's budget takes
                "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState
                           if any(t.state == state for t in trials)},
                "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params}}


def sweep_objectives(names: Any) -> tuple[str, ...]:
    """``hydra.sweeper.objectives`` checked against the search's registry (empty: the run's own return value)."""
    if names is None:
        return ()
    names = [names] if isinstance(names, str) else list(names)
    try:
        resolve(names)  # ``dev`` stays as written: each run resolves it by its own downstream.metric
    except ObjectiveError as error:
        raise SweepError(str(error).replace("search.objectives", "hydra.sweeper.objectives")) from error
    return tuple(names)


def sweep_directions(direction: Any, objectives: Sequence[str]) -> list[str]:
    """The study's directions: as given; else each objective's own (``dev`` maximises); else maximise, which is
    what maskpolicy-pretrain's own return value (the downstream's dev metric) wants."""
    if direction is None:
        return [OBJECTIVES[name].direction if name in OBJECTIVES else "maximize" for name in objectives] or [
            "maximize"]
    directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
    if not directions or any(d not in ("minimize", "maximize") for d in directions):
        raise SweepError(f"hydra.sweeper.direction is minimize, maximize or a list of them, got {direction!r}")
    if objectives and len(objectives) != len(directions):
        raise SweepError(f"hydra.sweeper.direction gives {len(directions)} directions for {len(objectives)} "
                         f"objectives {list(objectives)}; give one per objective, or none (each objective's own)")
    return directions


def custom_space(path: str | None) -> Callable[[DictConfig, optuna.Trial], None] | None:
    """``hydra.sweeper.custom_search_space``: the function that adds its own suggestions to each trial."""
    if not path:
        return None
    try:
        return get_method(path)
    except Exception as error:  # Hydra raises ImportError or ValueError with the reason
        raise SweepError(f"hydra.sweeper.custom_search_space={path!r} is not an importable function "
                         f"(module.function, called as function(cfg, trial)): {error}") from error


def optimization_results(study: optuna.Study) -> str:
    """``optimization_results.yaml`` as hydra-optuna-sweeper writes it: the best trial, or the Pareto front."""
    if not any(trial.state == TrialState.COMPLETE for trial in study.get_trials(deepcopy=False)):
        results: dict[str, Any] = {"name": "optuna", "best_params": None, "best_value": None}
    elif len(study.directions) == 1:
        results = {"name": "optuna", "best_params": study.best_trial.params, "best_value": study.best_trial.value}
    else:
        results = {"name": "optuna", "solutions": [{"params": trial.params, "values": trial.values}
                                                   for trial in study.best_trials]}
    return OmegaConf.to_yaml(OmegaConf.create(results))


def _surplus(study: optuna.Study, budget: TrialBudget, trial: optuna.Trial) -> bool:
    """A trial another sweeper's ask made one too many is recorded as surplus (failed, never run)."""
    if not budget.surplus(trial.number):
        return False
    trial.set_user_attr(SURPLUS_ATTR, True)
    _told(study, trial, state=TrialState.FAIL)
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


def _tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn, n_objectives: int) -> None:
    """Tells the study how the run ended (a failed run keeps its error in the trial's ``failure``)."""
    raised = result._return_value if result.status == JobStatus.FAILED else None
    if isinstance(raised, optuna.TrialPruned):
        _told(study, trial, state=TrialState.PRUNED)
        return
    if raised is not None:
        _fail(study, trial, f"{type(raised).__name__}: {raised}")
        return
    values = _values(result.return_value, n_objectives)
    if isinstance(values, str):
        _fail(study, trial, f"SweepError: {values}")
        return
    _told(study, trial, values)


def _told(study: optuna.Study, trial: optuna.Trial, *args: Any, **kwargs: Any) -> None:
    """``study.tell``. A grid sampler calls ``Study.stop`` once its grid is used up, which Optuna refuses outside
    ``optimize()`` with a RuntimeError; the trial is stored as told all the same (``tell`` stores it in a
    ``finally``), and the sweep's own budget ends it, so that refusal is dropped."""
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(FAILURE_ATTR, reason)
    _told(study, trial, state=TrialState.FAIL)
    log.error("trial %d failed: %s", trial.number, reason)


def _values(returned: Any, n_objectives: int) -> list[float] | str:
    """The run's return value as the study's values, or why it cannot be."""
    several = isinstance(returned, Sequence) and not isinstance(returned, str)
    values = list(returned) if several else [returned]
    if len(values) != n_objectives or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in values):
        wanted = "a finite number" if n_objectives == 1 else f"a list of {n_objectives} finite numbers"
        return f"the run returned {returned!r}, not {wanted} (one per hydra.sweeper.direction)"
    return [float(v) for v in values]
