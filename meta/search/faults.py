"""What keeps a study whole when processes die, the database goes away and trials keep failing.

- **An exact trial budget** (:class:`TrialBudget`): with a heartbeat storage every running trial is alive or
  will be failed by its missing heartbeat, so a worker starts a trial only while the finished and running
  (or queued) trials leave room for it, and a trial that two workers created in the same instant is
  recorded as *surplus* (failed, never run) instead of being run beyond ``search.n_trials``. Without a
  heartbeat (a journal file, a gRPC proxy) a dead trial is indistinguishable from a live one, so there the
  count of finished trials alone decides, as Optuna's own ``MaxTrialsCallback`` does.
- **Repeated failures stop the study** (:class:`FailureGuard`): ``search.max_consecutive_failures`` trials in
  a row that raised (in the order they ended, across every worker; trials failed by their heartbeat and
  surplus trials neither count nor break the run) stop every process, naming the error they share. The stop
  is kept in the study's ``stopped`` attribute so that the other workers stop after their current trial; the
  main command clears it when it starts again, and the study resumes.
- **A lost database inside a trial** (:class:`StorageInterrupted`) is not the trial's failure: the trial is
  left to its heartbeat, which fails it once the grace period passes, and its parameters are retried. A trial
  that another worker failed as stale while it still ran (:class:`TrialTakenOver`) is left as it is.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TAKEN = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)   # what holds a grid point
FAILURE_ATTR = "failure"   # a trial that raised keeps its error here (the report shows it)
SURPLUS_ATTR = "surplus"   # a trial created when the study already had its budget of trials
STOP_ATTR = "stopped"      # the study's attribute that stops every worker, with the reason
POLL_SECONDS = 1.0
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")  # two errors that differ only in their numbers are one


class RepeatedFailures(RuntimeError):
    """The last ``search.max_consecutive_failures`` trials all failed: the study stops, its records kept."""


class Surplus(RuntimeError):
    """A trial created when the study already had ``n_trials`` trials finished, running or queued."""


class StorageInterrupted(BaseException):  # noqa: N818 (not an Exception on purpose: Optuna must not record it)
    """A storage call failed inside a trial.

    It derives from ``BaseException`` so that ``study.optimize`` neither catches it nor tells the trial
    failed: the trial stays running without a heartbeat, and is failed and retried once its grace period
    passes, as if its worker had been killed.
    """


class TrialTakenOver(BaseException):  # noqa: N818 (a BaseException for the same reason)
    """This worker's trial was failed by another worker while it still ran (its heartbeat was late by more than
    the grace period, e.g. while the database was away); its parameters are retried there, so nothing is told."""


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage fails trials whose heartbeat stopped (RDB storages with a heartbeat)."""
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def fail_stale(study: optuna.Study) -> None:
    """Fails the trials whose heartbeat stopped and queues their parameters again (a no-op without heartbeat)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)


@dataclass(frozen=True)
class Counts:
    finished: int
    running: tuple[int, ...]   # numbers of the running trials
    waiting: int


class TrialBudget:
    """How many trials a study may still start, so that it ends holding exactly ``total`` finished trials."""

    def __init__(self, study: optuna.Study, total: int) -> None:
        self.study, self.total = study, total
        self.exact = heartbeat_enabled(study)
        self.grid_walked = False

    def counts(self) -> Counts:
        trials = self.study.get_trials(deepcopy=False)
        return Counts(sum(t.state in FINISHED for t in trials),
                      tuple(t.number for t in trials if t.state == TrialState.RUNNING),
                      sum(t.state == TrialState.WAITING for t in trials))

    def done(self, counts: Counts) -> bool:
        return counts.finished >= self.total

    def may_start(self, counts: Counts, exhausted: bool = False) -> bool:
        """Whether this worker may start a trial now; ``exhausted``: the sampler has no new configuration,
        so only queued trials (retries) may start."""
        if counts.waiting:
            return True
        if exhausted or self.grid_walked:
            return False
        return counts.finished + len(counts.running) < self.total if self.exact else counts.finished < self.total

    def surplus(self, number: int) -> bool:
        """Whether the trial ``number`` (just started) is one too many: the finished trials, the trials running
        that started before it and the queued ones already fill the budget."""
        if self.repeats_grid_point(number):
            self.grid_walked = True  # every point is taken: from now on only queued retries may start here
            return True
        if not self.exact:
            return False
        counts = self.counts()
        return counts.finished + sum(n < number for n in counts.running) + counts.waiting >= self.total

    def repeats_grid_point(self, number: int) -> bool:
        """Whether the trial ``number`` was handed a grid point another trial completed, runs or waits on (a grid
        sampler does so once every point is taken)."""
        trials = self.study.get_trials(deepcopy=False)
        point = trials[number].system_attrs.get("grid_id")
        return point is not None and any(
            trial.number != number and trial.system_attrs.get("grid_id") == point and trial.state in TAKEN
            for trial in trials)

    def wait(self) -> None:
        """While every slot is taken: fail the trials whose heartbeat stopped (their retries are queued), then
        wait a moment."""
        fail_stale(self.study)
        time.sleep(POLL_SECONDS)


def raised(trial: FrozenTrial) -> bool:
    """A trial that failed by raising (not by a stopped heartbeat, not a surplus trial)."""
    return trial.state == TrialState.FAIL and FAILURE_ATTR in trial.user_attrs and not trial.user_attrs.get(
        SURPLUS_ATTR)


def failure_streak(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The failed trials at the end of the study, in the order they ended: trials that raised since the last
    trial that finished (complete or pruned). Heartbeat-failed and surplus trials are skipped."""
    ended = sorted((t for t in trials if t.datetime_complete is not None and (t.state in FINISHED or raised(t))),
                   key=lambda t: (t.datetime_complete, t.number))
    streak: list[FrozenTrial] = []
    for trial in reversed(ended):
        if not raised(trial):
            break
        streak.append(trial)
    return streak[::-1]


def streak_message(streak: Sequence[FrozenTrial], limit: int, setting: str, finished: int, where: str = "") -> str:
    """What a stopped study tells a person: how many failed, the error they share (or each one), and the fix."""
    errors = [t.user_attrs.get(FAILURE_ATTR, "?") for t in streak]
    numbers = ", ".join(f"#{t.number}" for t in streak)
    if len(set(errors)) == 1:
        cause = f"all with the same error: {errors[0]}"
    elif len({_NUMBER.sub("#", error) for error in errors}) == 1:
        cause = f"all with the same error but for its numbers, the last: {errors[-1]}"
    else:
        cause = "with these errors: " + "; ".join(f"#{t.number} {error}" for t, error in zip(streak, errors,
                                                                                                strict=True))
    logs = f" Each trial's log is {where}." if where else ""
    return (f"the study stopped: the last {len(streak)} trials ({numbers}) failed ({setting}={limit}), {cause}. Fix "
            f"the cause and run the same command again: the {finished} finished trials are kept and the study "
            f"resumes (the failed ones stay recorded as failed); or raise {setting} (0: never stop).{logs}")


class FailureGuard:
    """A study callback: stops this process when the study was stopped, or when the trial that just ended
    makes ``limit`` failures in a row (0: never); the stop is recorded on the study for the other workers."""

    def __init__(self, limit: int, setting: str = "search.max_consecutive_failures", where: str = "") -> None:
        if limit < 0:
            raise ValueError(f"{setting} must be 0 (never stop) or a number of trials, got {limit}")
        self.limit, self.setting, self.where = limit, setting, where

    def check(self, study: optuna.Study) -> None:
        """Raises :class:`RepeatedFailures` if another process stopped the study."""
        reason = study.user_attrs.get(STOP_ATTR)
        if reason:
            raise RepeatedFailures(reason)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.limit and raised(trial):
            trials = study.get_trials(deepcopy=False)
            streak = failure_streak(trials)
            if len(streak) >= self.limit:
                message = streak_message(streak[-self.limit:], self.limit, self.setting,
                                         sum(t.state in FINISHED for t in trials), self.where)
                study.set_user_attr(STOP_ATTR, message)
                raise RepeatedFailures(message)
        self.check(study)


def clear_stop(study: optuna.Study) -> None:
    """A new start of the main command resumes a stopped study."""
    if study.user_attrs.get(STOP_ATTR):
        log.info("the study had stopped after repeated failures; resuming")
        study.set_user_attr(STOP_ATTR, None)


class Heartbeat:
    """Beats for trials that an ask-and-tell loop (the Hydra sweeper) runs outside ``study.optimize``, which gets
    no heartbeat from Optuna: while the block runs, every ``interval`` seconds. A sweeper killed mid-batch then
    leaves trials whose heartbeat stops, and the next start fails them and queues their parameters again."""

    def __init__(self, study: optuna.Study, trial_ids: Sequence[int]) -> None:
        self.storage, self.trial_ids = study._storage, list(trial_ids)
        interval = getattr(self.storage, "get_heartbeat_interval", None)
        self.interval = interval() if interval is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as error:  # never end the thread: a missed beat is retried at the next one
                    log.warning("heartbeat of trial %d not recorded (%s)", trial_id, error)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        if self.interval is not None and self.trial_ids:
            self._thread = threading.Thread(target=self._beat, name="sweeper-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
