"""The outer search: an Optuna study over masking policies, its workers and its final evaluation.

``run_search`` reads straight through: check the space, sampler, pruner and storage
(every bad setting fails here, before training) → start ``n_workers − 1`` worker
processes on the same storage → optimise until the study holds ``n_trials`` finished
trials (a re-run resumes; a killed worker's trial is marked failed by its missing
heartbeat and its parameters are retried) → re-run the best trial of each policy family
with several seeds and score it on the test split → leaderboard and report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import DictConfig, OmegaConf
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from ..io import plain
from .engines import SearchConfigError, build_pruner, build_sampler, open_storage
from .pruning import OptunaPruning
from .space import SearchSpace
from .trial import run_trial

log = logging.getLogger(__name__)
OBJECTIVES = {"dev_em": "maximize", "mll": "maximize"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Names:
    """Config-group choices of the run, for results and labels."""

    task: str
    model: str


@dataclass
class Search:
    """Everything the study needs, built and checked before any training."""

    space: SearchSpace
    study: optuna.Study
    objectives: tuple[str, ...]
    storage_location: str


def prepare(cfg: DictConfig, output_dir: Path) -> Search:
    """Builds and checks the space, objectives, sampler, pruner and storage; opens (or resumes) the study."""
    options = cfg.search
    space = SearchSpace.from_config(options.space)
    _check_run_keys(cfg, space)
    objectives = tuple(options.objectives)
    unknown = [name for name in objectives if name not in OBJECTIVES]
    if not objectives or unknown:
        raise SearchConfigError(f"search.objectives must be a non-empty list from {list(OBJECTIVES)}, got "
                                f"{list(objectives)}")
    sampler_name = options.sampler if len(objectives) == 1 or options.sampler != "tpe" else "nsga2"
    # each worker process draws its own random stream, or workers would propose the same trials
    sampler_seed = cfg.seed * 1000 + options.worker_index
    sampler = build_sampler(sampler_name, sampler_seed, space, **plain(options.sampler_options))
    pruner_name = options.pruner if len(objectives) == 1 else "none"  # Optuna prunes single-objective studies only
    pruner = build_pruner(pruner_name, **(plain(options.pruner_options) if pruner_name != "none" else {}))
    location = options.storage or str(output_dir / "study.db")
    storage = open_storage(location, options.heartbeat_interval, options.grace_period, options.max_retry)
    study = optuna.create_study(storage=storage, study_name=options.study_name, sampler=sampler, pruner=pruner,
                                directions=[OBJECTIVES[name] for name in objectives], load_if_exists=True)
    if options.every_family_first and options.role == "main" and not study.get_trials(deepcopy=False):
        for family in list(space.families)[: options.n_trials]:  # the other parameters are left to the sampler
            study.enqueue_trial({"family": family}, skip_if_exists=True)
    return Search(space, study, objectives, location)


def _check_run_keys(cfg: DictConfig, space: SearchSpace) -> None:
    """Every run-config key the space overrides must exist in the run config (a typo would be ignored)."""
    keys = [*space.budget, *(key for family in space.families.values() for key in family.run_params)]
    missing = [key for key in keys if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING]
    if missing:
        raise SearchConfigError(f"the search space overrides {missing}, which the run config does not have; "
                                "check the spelling against `maskpolicy-search --cfg job`")


_MISSING = object()


def objective(cfg: DictConfig, search: Search, output_dir: Path, names: Names) -> Callable[[optuna.Trial], Any]:
    """The function Optuna calls: one trial = one policy pre-trained, scored and fine-tuned."""

    def evaluate(trial: optuna.Trial) -> float | tuple[float, ...]:
        suggestion = search.space.suggest(trial)
        trial.set_user_attr("policy", suggestion.policy)
        trial.set_user_attr("overrides", suggestion.overrides)
        callbacks = [OptunaPruning(trial, monitor="dev/em")] if len(search.objectives) == 1 else []
        try:
            results = run_trial(cfg, suggestion.family, suggestion.policy, suggestion.overrides,
                                output_dir / "trials" / f"{trial.number:04d}", cfg.seed, names.task, names.model,
                                callbacks)
        except optuna.TrialPruned:
            raise
        except Exception as error:  # recorded on the trial; the study goes on (optimize catches it)
            trial.set_user_attr("failure", f"{type(error).__name__}: {error}")
            raise
        record(trial, results)
        values = {"dev_em": results["downstream"]["dev_em"], "mll": (results["mll"] or {}).get("nats_per_token")}
        if any(values[name] is None or not math.isfinite(values[name]) for name in search.objectives):
            raise ValueError(f"trial produced no finite value for {list(search.objectives)}: {values}")
        chosen = tuple(values[name] for name in search.objectives)
        return chosen[0] if len(chosen) == 1 else chosen

    return evaluate


def record(trial: optuna.Trial, results: dict[str, Any]) -> None:
    """Keeps what the leaderboard and report need on the trial itself (the storage is the record)."""
    mll = results.get("mll") or {}
    trial.set_user_attr("mll_nats_per_token", mll.get("nats_per_token"))
    trial.set_user_attr("mll_per_rate", mll.get("per_rate"))
    trial.set_user_attr("seconds", results["wall_seconds"])
    trial.set_user_attr("tokens", results["pretrain"].get("tokens", 0))
    trial.set_user_attr("test_em", results["downstream"]["test_em"])


def optimize(cfg: DictConfig, search: Search, output_dir: Path, names: Names) -> None:
    """Runs trials in this process until the study holds ``search.n_trials`` finished ones."""
    budget = MaxTrialsCallback(cfg.search.n_trials, states=FINISHED)
    if _finished(search.study) >= cfg.search.n_trials:
        return
    search.study.optimize(objective(cfg, search, output_dir, names), callbacks=[budget], catch=(Exception,),
                          gc_after_trial=True)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def share_cores(processes: int) -> int:
    """Torch threads per process so ``processes`` processes do not oversubscribe the machine's cores.

    Two processes with a thread per core each thrash a small machine (measured 5–10× slower).
    """
    threads = max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(threads)
    return threads


def start_workers(count: int, overrides: Sequence[str], output_dir: Path, storage: str,
                  threads: int) -> list[subprocess.Popen]:
    """``count`` more processes of this command, optimising the same study (no final evaluation)."""
    workers = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    logs = output_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        command = [sys.executable, "-m", "maskpolicy.meta.search.cli", *overrides, f"hydra.run.dir={output_dir}",
                   "search.role=worker", "search.n_workers=1", f"search.worker_index={index + 1}",
                   f"search.storage={storage}",
                   f"hydra.job_logging.handlers.file.filename={logs / f'worker-{index + 1}.log'}"]
        with open(logs / f"worker-{index + 1}.out", "a") as out:
            workers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env))
    return workers


def best_per_family(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The completed trial with the best (first) objective of each family."""
    best: dict[str, FrozenTrial] = {}
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        family = trial.params["family"]
        if family not in best or sign * trial.values[0] > sign * best[family].values[0]:
            best[family] = trial
    return best


def final_runs(cfg: DictConfig, label: str, policy: dict, overrides: dict, output_dir: Path, names: Names
               ) -> list[dict]:
    """A configuration re-run with every final seed; finished runs are read back, not re-run (resume)."""
    runs = []
    for seed in cfg.search.final.seeds:
        run_dir = output_dir / "final" / label / f"seed-{seed}"
        existing = run_dir / "results.json"
        if existing.exists():
            runs.append(json.loads(existing.read_text()))
            continue
        runs.append(run_trial(cfg, label, policy, overrides, run_dir, seed, names.task, names.model))
    return runs
