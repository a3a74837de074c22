"""The Optuna study over masking policies: set-up, the trial function, and the worker processes.

:func:`prepare` checks everything before any training (space, objectives, sampler, pruner,
probe, storage, final seeds) and opens or resumes the study; :func:`optimize` runs trials in this
process until the study holds exactly ``search.n_trials`` finished ones (a killed worker's trial
is failed by its missing heartbeat and its parameters retried; ``search.max_consecutive_failures``
failures in a row stop the study: :mod:`.faults`); :func:`start_workers` adds processes on the same
storage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from maskpolicy.meta.console import run_log
from maskpolicy.meta.pipeline import RunNames, StageCallbacks
from maskpolicy.meta.results.metrics import METRICS, TRIAL_METRICS
from maskpolicy.meta.results.schema import PretrainResults
from maskpolicy.meta.search import objectives as objective_defs
from maskpolicy.meta.search.engines import (
    SearchConfigError,
    StorageLost,
    build_pruner,
    build_sampler,
    database_error,
    open_storage,
    open_study,
    shown_location,
    storage_failure,
    wait_for_storage,
)
from maskpolicy.meta.search.faults import (
    FAILURE_ATTR,
    SURPLUS_ATTR,
    FailureGuard,
    StorageInterrupted,
    Surplus,
    TrialBudget,
    TrialTakenOver,
    clear_stop,
)
from maskpolicy.meta.search.objectives import Objective, ObjectiveError
from maskpolicy.meta.search.progress import TrialProgress
from maskpolicy.meta.search.pruning import OptunaPruning, ProbePruning
from maskpolicy.meta.search.space import SearchSpace
from maskpolicy.meta.search.trial import run_configuration
from maskpolicy.meta.training import check_compile, check_devices, data_parallel

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_MISSING = object()


@dataclass
class Search:
    """Everything the study needs, built and checked before any training."""

    space: SearchSpace
    study: optuna.Study
    objectives: tuple[Objective, ...]
    storage_location: str
    final_seeds: tuple[int, ...]
    pruning: PruningPlan

    @property
    def storage_location_shown(self) -> str:
        """The storage location with any password hidden, for messages."""
        return shown_location(self.storage_location)


@dataclass(frozen=True)
class PruningPlan:
    """What a trial reports to the pruner, on one step axis.

    Pre-training probe values at their pre-training steps (``probe_every``, ``2·probe_every``, …);
    the objective's fine-tuning monitor after each epoch at ``finetune_offset + epoch``, an
    offset past every pre-training budget the space can draw, so a step never holds two kinds
    of value across trials.
    """

    objective: Objective | None
    probe_every: int | None
    probe_target: str | None
    finetune_offset: int
    reason: str = ""
    start_fraction: float = 0.0   # probe values before this share of pre-training are not reported

    @property
    def active(self) -> bool:
        return self.objective is not None and (self.probe_every is not None or self.objective.monitor is not None)

    def record(self) -> dict[str, Any]:
        return {"probe_every": self.probe_every, "probe_target": self.probe_target,
                "start_fraction": self.start_fraction, "finetune_offset": self.finetune_offset,
                "finetune_monitor": self.objective.monitor if self.objective else None}

    def callbacks(self, trial: optuna.Trial) -> StageCallbacks:
        """The pruning callbacks of one trial's two training stages."""
        if not self.active:
            return StageCallbacks()
        finetuning = ([OptunaPruning(trial, self.objective.monitor, self.objective.mode, self.finetune_offset)]
                      if self.objective.monitor else [])
        if self.probe_every is None:
            return StageCallbacks(finetuning=finetuning)
        return StageCallbacks(pretraining=lambda probe: [ProbePruning(trial, probe, self.start_fraction)] if probe
                              else [],
                              finetuning=finetuning)


def prepare(cfg: DictConfig, output_dir: Path) -> Search:
    """Checks the space, objectives, sampler, pruner, storage and final seeds; opens (or resumes) the study."""
    options = cfg.search
    _check_trainer(cfg.trainer)
    check_compile(cfg)
    space = SearchSpace.from_config(options.space)
    _check_run_keys(cfg, space)
    try:
        objectives = objective_defs.resolve(options.objectives, downstream_metric(cfg))
    except ObjectiveError as error:
        raise SearchConfigError(str(error)) from error
    _check_scored(cfg, objectives)
    seeds = final_seeds(cfg)
    # each worker process draws its own random stream, or workers would propose the same trials
    sampler = build_sampler(options.sampler, seed=cfg.seed * 1000 + options.worker_index)
    if isinstance(sampler, optuna.samplers.GridSampler) and options.worker_index:
        # a grid's order comes from its seed and a trial's number picks its point: every worker walks one order
        sampler = build_sampler(options.sampler, seed=cfg.seed * 1000)
    pruner = build_pruner(options.pruner)
    pruning = pruning_plan(cfg, space, objectives)
    if not pruning.active and not isinstance(pruner, optuna.pruners.NopPruner):
        log.info("no pruning: %s", pruning.reason)
        pruner = optuna.pruners.NopPruner()
    location = options.storage or str(output_dir / "study.db")
    storage = open_storage(location, options.heartbeat_interval, options.grace_period, options.max_retry)
    study = open_study(storage, options.study_name, sampler=sampler, pruner=pruner,
                       directions=[o.direction for o in objectives])
    study.set_user_attr("pruning", pruning.record())  # the report reads which steps hold which signal
    if options.role == "main":
        clear_stop(study)
    if options.every_family_first and options.role == "main" and not study.get_trials(deepcopy=False):
        for family in list(space.families)[: options.n_trials]:  # the other parameters are left to the sampler
            study.enqueue_trial({"family": family}, skip_if_exists=True)
    return Search(space, study, objectives, location, seeds, pruning)


def final_seeds(cfg: DictConfig) -> tuple[int, ...]:
    """The seeds of the final re-runs: ``search.final.seeds``, or the ``n_seeds`` after the search's seed.

    They must be disjoint from the seed the search ran its trials with: a final mean that
    contained the run which won selection would be biased upwards.
    """
    final = cfg.search.final
    seeds = tuple(range(cfg.seed + 1, cfg.seed + 1 + final.n_seeds)) if final.seeds is None else tuple(final.seeds)
    if cfg.seed in seeds:
        raise SearchConfigError(
            f"search.final.seeds {list(seeds)} include the search's seed {cfg.seed}: the configuration that won "
            f"selection on that seed would sit inside its own reported mean. Choose seeds the search did not use "
            f"(e.g. search.final.seeds=[{cfg.seed + 1},{cfg.seed + 2}]) or leave search.final.seeds=null"
        )
    if len(set(seeds)) != len(seeds):
        raise SearchConfigError(f"search.final.seeds {list(seeds)} repeat a seed; list each once")
    return seeds


def pruning_plan(cfg: DictConfig, space: SearchSpace, objectives: Sequence[Objective]) -> PruningPlan:
    """Checks the pruning settings against the run config and the space; says what each trial reports."""
    budgets = [domain.probes() for domain in _run_domains(space, "pretrain.steps")]
    longest = max([cfg.pretrain.steps, *(max(values) for values in budgets)])
    shortest = min([cfg.pretrain.steps, *(min(values) for values in budgets)]) if budgets else cfg.pretrain.steps
    objective = objective_defs.pruned_objective(objectives)
    probe_every = cfg.pretrain.probe.every or 0
    if probe_every > shortest:  # every trial's pre-training would refuse it, whatever is pruned
        pruned = cfg.search.pruning.pretraining and objective is not None
        raise SearchConfigError(
            f"pretrain.probe.every={probe_every} is longer than the shortest pre-training budget ({shortest} steps): "
            f"the probe would never run{', so no trial could be pruned during pre-training' if pruned else ''}, and "
            f"every trial would stop on it before training. Lower pretrain.probe.every (at most {shortest}) or set "
            "pretrain.probe.every=0 (no probe"
            + (", and no pruning before fine-tuning)" if pruned else "; search.pruning.pretraining=false alone "
               "still runs it, unreported)")
        )
    every = probe_every if cfg.search.pruning.pretraining else 0
    start = float(cfg.search.pruning.get("start_fraction") or 0.0)
    if objective is None:
        return PruningPlan(None, None, None, longest + 1, "Optuna prunes single-objective studies only")
    if not 0.0 <= start < 1.0:
        raise SearchConfigError(f"search.pruning.start_fraction must be in [0, 1), got {start}")
    if every and (shortest // every) * every < start * shortest:
        raise SearchConfigError(
            f"with pretrain.probe.every={every} the shortest pre-training budget ({shortest} steps) has no probe "
            f"after search.pruning.start_fraction={start} of it; lower either"
        )
    plan = PruningPlan(objective, every or None, cfg.pretrain.probe.target if every else None, longest + 1,
                       start_fraction=start if every else 0.0)
    if not plan.active:
        return dataclasses.replace(plan, reason=f"the objective {objective.name} is known only when a trial ends and "
                                                "search.pruning.pretraining is off")
    return plan


def _check_trainer(trainer: DictConfig) -> None:
    """A trial trains inside the search process, which Lightning's DDP launcher would start again per device."""
    if data_parallel(trainer):
        raise SearchConfigError(
            f"trainer.strategy={trainer.strategy} with trainer.devices={trainer.get('devices', 'auto')}: a search "
            "trial cannot train data-parallel "
            "(Lightning would re-run the whole search once per device). Run trials side by side with "
            "search.n_workers=N and trainer=cpu or trainer=gpu; use trainer=ddp with maskpolicy-pretrain"
        )
    check_devices(trainer)


def downstream_metric(cfg: DictConfig) -> str:
    """The dev metric of the run config's downstream stage (``em`` when the config names none)."""
    node = cfg.get("downstream")
    return str(node.get("metric", "em")) if node is not None else "em"


def _check_scored(cfg: DictConfig, objectives: Sequence[Objective]) -> None:
    """A score objective needs its score computed in every trial."""
    for objective in objectives:
        target = objective.score_target
        if target and not (cfg.score.enabled and target in (cfg.score.get("targets") or ["all"])):
            raise SearchConfigError(f"search.objectives has {objective.name}, but trials do not compute it: set "
                                    f"score.enabled=true and include {target} in score.targets")


def _run_domains(space: SearchSpace, key: str) -> list:
    """Every domain the space gives the run-config ``key`` (the budget's and the families' own)."""
    found = [space.budget[key]] if key in space.budget else []
    return found + [family.run_params[key] for family in space.families.values() if key in family.run_params]


def _check_run_keys(cfg: DictConfig, space: SearchSpace) -> None:
    """Every run-config key the space overrides must exist in the run config (a typo would be ignored)."""
    keys = [*space.budget, *(key for family in space.families.values() for key in family.run_params)]
    missing = [key for key in keys if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING]
    if missing:
        raise SearchConfigError(f"the search space overrides {missing}, which the run config does not have; "
                                "check the spelling against `maskpolicy-search --cfg job`")


def trial_function(cfg: DictConfig, search: Search, output_dir: Path, names: RunNames,
                   budget: TrialBudget | None = None) -> Callable[[optuna.Trial], Any]:
    """The function Optuna calls: one trial = one policy pre-trained, scored and fine-tuned, judged on dev.

    A trial that ``budget`` finds surplus fails at once, unrun; a trial whose storage call fails (the database
    went away) raises :class:`.faults.StorageInterrupted` and is left to its heartbeat; one that another worker
    failed as stale meanwhile raises :class:`.faults.TrialTakenOver` and is left as it is.
    """
    def evaluate(trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            if budget is not None and budget.surplus(trial.number):
                trial.set_user_attr(SURPLUS_ATTR, True)
                raise Surplus(f"trial {trial.number} not run: the study already has its {budget.total} trials "
                              "finished, running or queued (another worker started one at the same moment)")
            suggestion = search.space.suggest(trial)
            trial.set_user_attr("policy", suggestion.policy)
            trial.set_user_attr("overrides", suggestion.overrides)
            trial_dir = output_dir / "trials" / f"{trial.number:04d}"
            with run_log(trial_dir / "run.log"):  # the search's console shows one line per trial
                results = run_configuration(cfg, suggestion.policy, suggestion.overrides, cfg.seed, trial_dir,
                                            RunNames(suggestion.family, names.task, names.model),
                                            test=False, callbacks=search.pruning.callbacks(trial))
            record(trial, results)
            return objective_defs.values(search.objectives, results)
        except (optuna.TrialPruned, Surplus):
            raise
        except UpdateFinishedTrialError as error:
            raise TrialTakenOver(f"trial {trial.number}: {error}") from error
        except Exception as error:  # recorded on the trial; the study goes on (optimize catches it)
            if storage_failure(error) is not None:
                raise StorageInterrupted(f"trial {trial.number}: {database_error(storage_failure(error))}"
                                         ) from error
            trial.set_user_attr(FAILURE_ATTR, f"{type(error).__name__}: {error}")
            raise

    return evaluate


def record(trial: optuna.Trial, results: PretrainResults) -> None:
    """Keeps what the leaderboard and report need on the trial itself (the storage is the record)."""
    trial.set_user_attr("metrics", {name: METRICS[name].read(results) for name in TRIAL_METRICS})
    trial.set_user_attr("seconds", results.wall_seconds)
    trial.set_user_attr("tokens", results.pretrain.tokens)


def optimize(cfg: DictConfig, search: Search, output_dir: Path, names: RunNames) -> None:
    """Runs trials in this process until the study holds ``search.n_trials`` finished ones (exactly, on a storage
    with a heartbeat), the sampler has nothing new and nothing is pending, or failures repeat."""
    study, budget = search.study, TrialBudget(search.study, cfg.search.n_trials)
    guard = FailureGuard(int(cfg.search.get("max_consecutive_failures") or 0),
                         where=f"{output_dir / 'trials'}/NNNN/run.log (a worker's: its own run directory)")
    progress = TrialProgress(cfg.search.n_trials)
    evaluate = trial_function(cfg, search, output_dir, names, budget)
    exhausted = False  # the sampler stopped the study (a grid walked): only queued retries may still start
    while True:
        try:
            guard.check(study)
            counts = budget.counts()
            exhausted = exhausted or budget.grid_walked
            if budget.done(counts) or exhausted and not (counts.waiting or counts.running):
                return
            if not budget.may_start(counts, exhausted):
                budget.wait()  # every slot is taken; a trial that dies frees one (failed, its parameters queued)
                continue
            study.optimize(evaluate, n_trials=1, callbacks=[progress, guard], catch=(Exception,),
                           gc_after_trial=True)
            exhausted = exhausted or study._stop_flag
        except (UpdateFinishedTrialError, TrialTakenOver) as error:
            # this worker's trial was failed by another one while it still ran (a heartbeat late by more than the
            # grace period, e.g. while the database was away); its parameters are retried there
            log.warning("a trial of this worker was failed as stale by another worker (%s); going on", error)
        except (Exception, StorageInterrupted) as error:
            lost = storage_failure(error)
            if lost is None:
                raise
            timeout = cfg.search.get("reconnect_timeout", 60)
            log.warning("lost the study database (%s); waiting up to %s s for it", database_error(lost), timeout)
            if not wait_for_storage(study, timeout):
                raise StorageLost(
                    f"lost the study database {search.storage_location_shown} during the search "
                    f"({database_error(lost)}) and it did not come back within search.reconnect_timeout={timeout} s. "
                    "Every finished trial is kept there; once the server is back, re-run the same command to resume "
                    "(the interrupted trial is failed by its missing heartbeat and its parameters retried)"
                ) from error
            log.warning("the study database is back; the search goes on")


def best_per_family(study: optuna.Study, objective: Objective) -> dict[str, FrozenTrial]:
    """The completed trial with the best value of ``objective`` (the study's first) in each family."""
    best: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        family = trial.params["family"]
        if family not in best or objective.sign * trial.values[0] > objective.sign * best[family].values[0]:
            best[family] = trial
    return best


def start_workers(count: int, overrides: Sequence[str], output_dir: Path, storage: str,
                  threads: int) -> list[subprocess.Popen]:
    """``count`` more processes of this command, optimising the same study (no final evaluation)."""
    workers = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    logs = output_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        command = [sys.executable, "-m", "maskpolicy.meta.commands.search", *overrides, f"hydra.run.dir={output_dir}",
                   "search.role=worker", "search.n_workers=1", f"search.worker_index={index + 1}",
                   f"search.storage={storage}",
                   f"hydra.job_logging.handlers.file.filename={logs / f'worker-{index + 1}.log'}"]
        with open(logs / f"worker-{index + 1}.out", "a") as out:
            workers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env))
    return workers
