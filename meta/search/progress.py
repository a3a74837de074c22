"""A study's progress a person can follow: one line per finished trial, then a summary.

``trial 3/12 #2 entity: 0.3125 | best 0.3500 (#1) | 4 min left``: trials finished of the
budget, the trial's number and what it tried, how it ended, the best value so far and an
estimate of the time left (this session's time per finished trial × trials left; before a
trial has finished here, ``time left unknown``). A failed trial's line says how many failed in a
row (``| 2 failed in a row, time left unknown``): failures are not progress. It is an Optuna study
callback, so ``maskpolicy-search`` and the Hydra sweeper print the same lines.

The final re-runs print the same kind of line, ``final 3/8 entity seed 2: test EM 0.3125 | 6 min left``
(:class:`FinalProgress`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from maskpolicy.meta.results.schema import PretrainResults
from maskpolicy.meta.search.faults import FINISHED, SURPLUS_ATTR


def family_label(trial: FrozenTrial) -> str:
    """A search trial's family (``maskpolicy-search`` trials draw one first)."""
    return str(trial.params.get("family", ""))


class TrialProgress:
    """Prints one line per trial that ends; ``summary`` prints the study's totals.

    Args:
        total: the finished trials the study should hold.
        describe: what a trial tried, in a few words.
        write: where lines go (``print`` by default, flushed: workers' output goes to files).
        clock: seconds, for the estimate of the time left.
    """

    def __init__(self, total: int, describe: Callable[[FrozenTrial], str] = family_label,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.describe, self.clock = total, describe, clock
        self.write = write or (lambda line: print(line, flush=True))
        self.started, self.finished_here, self.failed_in_row = clock(), 0, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(SURPLUS_ATTR):
            self.write(f"trial #{trial.number} not run: the study already had its {self.total} trials finished, "
                       "running or queued")
            return
        if trial.state in FINISHED:
            self.finished_here, self.failed_in_row = self.finished_here + 1, 0
        elif trial.state == TrialState.FAIL:
            self.failed_in_row += 1
        self.write(self.line(study, trial))

    def line(self, study: optuna.Study, trial: FrozenTrial) -> str:
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        left = max(self.total - finished, 0)
        if not left:
            eta = "done"
        elif self.finished_here:
            eta = f"{duration((self.clock() - self.started) / self.finished_here * left)} left"
        else:
            eta = "time left unknown"
        if trial.state == TrialState.FAIL and self.failed_in_row:
            eta = f"{self.failed_in_row} failed in a row, {eta}"
        what = f" {self.describe(trial)}" if self.describe(trial) else ""
        return (f"trial {finished}/{self.total} #{trial.number}{what}: {outcome(trial)} | best {best_text(study)} | "
                f"{eta}")

    def summary(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = ", ".join(f"{sum(t.state == state for t in trials)} {state.name.lower()}"
                           for state in TrialState if any(t.state == state for t in trials))
        self.write(f"study {study.study_name}: {counts}; best {best_text(study)}; "
                   f"{duration(self.clock() - self.started)} in this session")


class FinalProgress:
    """Prints one line per final re-run that ends here (runs read back from an earlier session count as done).

    Args:
        total: the final runs of the search (configurations × seeds).
        done: how many of them were read back, finished earlier.
        write, clock: as for :class:`TrialProgress`.
    """

    def __init__(self, total: int, done: int = 0, write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.clock = total, done, clock
        self.write = write or (lambda line: print(line, flush=True))
        self.started, self.finished_here = clock(), 0

    def __call__(self, label: str, seed: int, results: PretrainResults) -> None:
        self.done, self.finished_here = self.done + 1, self.finished_here + 1
        left = self.total - self.done
        eta = f"{duration((self.clock() - self.started) / self.finished_here * left)} left" if left else "done"
        downstream = results.downstream
        test = downstream.test_f1 if downstream.metric == "f1" else downstream.test_em
        score = "no test score" if test is None else f"test {downstream.metric.upper()} {test:.4f}"
        self.write(f"final {self.done}/{self.total} {label} seed {seed}: {score} | {eta}")


def outcome(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return " ".join(f"{value:.4f}" for value in trial.values)
    if trial.state == TrialState.PRUNED:
        step = trial.last_step
        return "pruned" if step is None else f"pruned at step {step}"
    if trial.state == TrialState.FAIL:
        reason = trial.user_attrs.get("failure", "")
        return f"failed{': ' + reason[:80] if reason else ''}"
    return trial.state.name.lower()


def best_text(study: optuna.Study) -> str:
    """The best value so far and its trial; ``-`` before any trial completes or with several objectives."""
    if len(study.directions) != 1:
        return f"{len(study.best_trials)} on the Pareto front"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "-"
    best = study.best_trial
    return f"{best.value:.4f} (#{best.number})"


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
