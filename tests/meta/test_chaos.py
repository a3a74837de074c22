"""A chaos run on the real PostgreSQL server: four worker processes share one study while a controller SIGKILLs a
random worker among those mid-trial every few seconds (and starts it again, as a cluster's scheduler would) and
restarts the server twice. Afterwards nothing is lost or doubled, the study holds exactly ``n_trials`` finished
trials, and its leaderboard is the one an undisturbed study with the same sampler seed and trials gives.

The sampler is the grid (a trial's number picks its point, so the configurations do not depend on which worker
runs a trial or on how often one dies) over 3 families × 3 pre-training learning rates, and the objective is the
marginal-likelihood score (continuous: no two configurations tie, so each family's best is one configuration).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from maskpolicy.meta.search.engines import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # serial: its kill timings assume no other test's load

WORKERS, N_TRIALS, MAX_RETRY, SEED = 4, 9, 3, 24
MAX_KILLS = 6   # a kill every 3-6 s while trials run, at most this many (each costs a worker start)
SPACE = """\
families:
  random: {rate: 0.15}
  span: {rate: 0.15}
  entity: {rate: 0.15, shortfall: top_up}
budget:
  pretrain.learning_rate: {type: categorical, choices: [0.0005, 0.001, 0.003]}
"""
COMMON = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=20", "pretrain.batch_size=8",
          "pretrain.checkpoint_every=20", "finetune.epochs=1", "finetune.batch_size=8", "score.passes=2",
          "score.max_sequences=16", "score.targets=[all]", "trainer.enable_progress_bar=false", "search.n_workers=1",
          "search.final.seeds=[1]", "search.final.n_workers=2", "pretrain.probe.every=0", "search/pruner=none",
          "search.pruning.pretraining=false", "search.objectives=[mll]", "search.every_family_first=false",
          "search/sampler=grid", "search/space=chaos", f"search.n_trials={N_TRIALS}", "search.heartbeat_interval=1",
          "search.grace_period=4", f"search.max_retry={MAX_RETRY}", "search.max_consecutive_failures=3"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# what a worker may say when it exits early: it started while the server was restarting, or lost it for good
EARLY_EXITS = ("cannot connect to", "lost the study database")


def command(config_dir: Path, url: str, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "maskpolicy.meta.commands.search", "--config-dir", str(config_dir), *COMMON,
            f"search.storage={url}", f"hydra.run.dir={run_dir}", *overrides]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true", "HYDRA_FULL_ERROR": "1"}


def run_main(config_dir: Path, url: str, run_dir: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command(config_dir, url, run_dir), capture_output=True, text=True, timeout=600,
                          env=environment(), stdin=subprocess.DEVNULL, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def study_at(url: str) -> optuna.Study:
    return optuna.load_study(study_name="maskpolicy", storage=open_storage(url, heartbeat_interval=None))


def ran_by(run_dir: Path) -> set[int]:
    return {int(path.name) for path in (run_dir / "trials").glob("*")} if (run_dir / "trials").exists() else set()


def comparable(rows: list[dict]) -> list[dict]:
    """A leaderboard without what a disturbance may change: wall times and the numbers of the trials."""
    return [{key: value for key, value in row.items() if key not in ("trial", "seconds")} for row in rows]


@dataclass
class Chaos:
    """The controller: starts the workers, kills and restarts them, restarts the server, watches the study."""

    config_dir: Path
    url: str
    root: Path
    postgres: object
    rng: random.Random
    workers: dict[int, subprocess.Popen] = field(default_factory=dict)
    before: dict[int, set[int]] = field(default_factory=dict)   # trials a worker's earlier processes had started
    kills: int = 0
    killed_trials: set[int] = field(default_factory=set)   # running in the victim when it was killed
    worker_starts: int = 0
    early_exits: list[str] = field(default_factory=list)
    server_restarts: int = 0
    completed: dict[int, float] = field(default_factory=dict)   # every completed trial ever seen, with its value

    def run_dir(self, index: int) -> Path:
        return self.root / f"worker-{index}"

    def start(self, index: int) -> None:
        run_dir = self.run_dir(index)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.before[index] = ran_by(run_dir)
        with open(run_dir / "err", "a") as err:
            self.workers[index] = subprocess.Popen(
                command(self.config_dir, self.url, run_dir, "search.role=worker", f"search.worker_index={index}"),
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=environment(), cwd=self.root)
        self.worker_starts += 1

    def trials(self) -> list[optuna.trial.FrozenTrial] | None:
        try:
            return study_at(self.url).get_trials(deepcopy=False)
        except Exception:  # the server is restarting, or the study is not created yet
            return None

    def kill(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        """SIGKILLs a random worker among those mid-trial, and starts it again; whether there was one. (A worker that
        is still starting, or whose only running trial is its killed predecessor's, is not mid-trial.)"""
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        busy = [index for index, worker in self.workers.items()
                if worker.poll() is None and running & (ran_by(self.run_dir(index)) - self.before[index])]
        if not busy:
            return False
        victim = self.rng.choice(busy)
        mid_trial = running & (ran_by(self.run_dir(victim)) - self.before[victim])
        self.workers[victim].send_signal(signal.SIGKILL)
        self.workers[victim].wait()
        self.kills += 1
        # a trial may have finished between reading the study and the kill: it was not killed mid-trial
        self.killed_trials |= mid_trial - self.finished_now()
        self.start(victim)
        return True

    def finished_now(self) -> set[int]:
        """The finished trials, read again until the server answers (it may be restarting)."""
        deadline = time.monotonic() + 60
        while (trials := self.trials()) is None:
            assert time.monotonic() < deadline, "the study could not be read for 60 s"
            time.sleep(0.25)
        return {t.number for t in trials if t.state in FINISHED}

    def drive(self, timeout: float) -> None:
        for index in range(WORKERS):
            self.start(index)
        deadline = time.monotonic() + timeout
        next_kill = time.monotonic() + self.rng.uniform(3, 6)
        restart_when = [2, N_TRIALS // 2]                        # finished trials at which the server restarts
        done = False
        while True:
            assert time.monotonic() < deadline, f"the chaos study did not finish in {timeout} s: {self.summary()}"
            time.sleep(0.25)
            trials = self.trials()
            if trials is not None:
                self.completed.update({t.number: t.value for t in trials if t.state == TrialState.COMPLETE})
                done = sum(t.state in FINISHED for t in trials) >= N_TRIALS
                if restart_when and sum(t.state in FINISHED for t in trials) >= restart_when[0] and not done:
                    restart_when.pop(0)
                    self.postgres.restart()
                    self.server_restarts += 1
            for index, worker in self.workers.items():
                if worker.poll() not in (None, 0) and not done:  # an early exit: a scheduler starts it again
                    self.early_exits.append((self.run_dir(index) / "err").read_text().strip().splitlines()[-1])
                    self.start(index)
            if done and all(worker.poll() is not None for worker in self.workers.values()):
                return
            if not done and trials is not None and self.kills < MAX_KILLS and time.monotonic() >= next_kill \
                    and self.kill(trials):
                next_kill = time.monotonic() + self.rng.uniform(3, 6)

    def summary(self) -> str:
        return (f"{self.kills} kills (trials {sorted(self.killed_trials)}), {self.worker_starts} worker starts, "
                f"{len(self.early_exits)} early exits, {self.server_restarts} server restarts")


def test_a_study_survives_killed_workers_and_server_restarts_and_ends_as_an_undisturbed_one(postgres, tmp_path,
                                                                                             capsys):
    started = time.monotonic()
    config_dir = tmp_path / "conf"
    (config_dir / "search" / "space").mkdir(parents=True)
    (config_dir / "search" / "space" / "chaos.yaml").write_text(SPACE)

    # the undisturbed study: one process, the same sampler seed and trials, then its final re-runs
    calm_url, calm_dir = postgres.create_database("chaos_calm"), tmp_path / "calm"
    run_main(config_dir, calm_url, calm_dir)
    calm_seconds = time.monotonic() - started

    # the same study with four workers under fire, then the main command for its final re-runs
    chaos_url, chaos_root = postgres.create_database("chaos_fire"), tmp_path / "fire"
    chaos = Chaos(config_dir, chaos_url, chaos_root, postgres, random.Random(SEED))
    try:
        chaos.drive(timeout=600)
    finally:
        for worker in chaos.workers.values():
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    fire_seconds = time.monotonic() - started - calm_seconds
    assert all(worker.returncode == 0 for worker in chaos.workers.values()), [
        (chaos.run_dir(i) / "err").read_text()[-2000:] for i in chaos.workers]
    assert all(any(known in line for known in EARLY_EXITS) for line in chaos.early_exits), chaos.early_exits

    trials = study_at(chaos_url).get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials))) and len({t._trial_id for t in trials}) == len(trials)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == N_TRIALS  # exactly: never one more
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # no completed trial lost or changed; each configuration completed once; each trial run by one worker
    assert {n: v for n, v in chaos.completed.items()} == {t.number: t.value for t in trials
                                                          if t.number in chaos.completed}
    configurations = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(configurations)) == N_TRIALS
    by_worker = [ran_by(chaos.run_dir(i)) for i in range(WORKERS)]
    assert sum(map(len, by_worker)) == len(set().union(*by_worker))
    # every killed trial was failed by its heartbeat (no error of its own), its parameters retried at most max_retry
    # times, and its configuration finished once: by its last retry, or by another trial the grid sampler gave the
    # same point (a failed trial's point is offered again) while the retry waited or was killed in turn (seen under
    # a loaded machine: retry 13 of 10 killed after the point had finished elsewhere, so no third retry was due)
    stale = {t.number for t in trials if t.state == TrialState.FAIL and "failure" not in t.user_attrs
             and not t.user_attrs.get("surplus")}
    assert chaos.killed_trials <= stale, (chaos.killed_trials, stale)
    retries = [t for t in trials if "failed_trial" in t.system_attrs]
    for number in stale:
        root = trials[number].system_attrs.get("failed_trial", number)
        again = [t for t in retries if t.system_attrs["failed_trial"] == root]
        if not trials[root].params:  # killed between ask and its first suggest (seen 2026-12-04, with a server
            # restart in that gap): it had no point yet, so its retries draw new ones and there is none to finish
            assert again and len(again) <= MAX_RETRY, (number, root, [(t.number, t.state) for t in again])
            continue
        assert again and len(again) <= MAX_RETRY and all(t.params == trials[root].params for t in again), (
            number, root, [(t.number, t.state, t.params, t.system_attrs) for t in [trials[root], *again]])
        done_by = [t.number for t in finished if t.params == trials[root].params]
        assert len(done_by) == 1, (root, [(t.number, t.state) for t in again], done_by)
    assert not [t.number for t in trials if "failure" in t.user_attrs]  # no trial failed by its own error

    run_main(config_dir, chaos_url, chaos_root / "main")
    calm_board = json.loads((calm_dir / "leaderboard.json").read_text())
    fire_board = json.loads((chaos_root / "main" / "leaderboard.json").read_text())
    assert comparable(fire_board) == comparable(calm_board) and len(calm_board) == 3

    surplus = sum(bool(t.user_attrs.get("surplus")) for t in trials)
    with capsys.disabled():
        print(f"\nchaos: {WORKERS} workers, {chaos.summary()}; {len(retries)} retries; {len(trials)} trials recorded "
              f"({len(finished)} finished, {len(stale)} failed by their heartbeat, {surplus} surplus); undisturbed "
              f"study {calm_seconds:.0f} s, disturbed {fire_seconds:.0f} s, "
              f"{time.monotonic() - started:.0f} s in all")
