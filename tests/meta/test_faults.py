"""Nothing lost under faults, in one process: configurations refused up front, repeated failures stopping the
study (and resuming it), an exact trial budget, a lost database inside a trial, a sweeper's own heartbeat."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy.exc
from hydra import compose, initialize_config_module
from optuna.trial import TrialState

from maskpolicy.meta.config import ConfigError
from maskpolicy.meta.pipeline import RunNames
from maskpolicy.meta.search import faults, study
from maskpolicy.meta.search.engines import SearchConfigError, open_storage
from maskpolicy.meta.search.faults import (
    STOP_ATTR,
    FailureGuard,
    Heartbeat,
    RepeatedFailures,
    TrialBudget,
    failure_streak,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"families": {"random": {"rate": 0.2}, "span": {"rate": 0.2}}}
# the command of issue 24, which recorded 262 failed trials in 3.5 minutes before this check ran up front
ISSUE = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=6", "search.pruning.pretraining=false",
         "search.n_trials=3", "search.n_workers=1"]
NAMES = RunNames("", "bioworld", "tiny_bert")


def search_cfg(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("search", overrides=["search.every_family_first=false", *overrides])
    cfg.search.space = SPACE
    return cfg


@pytest.mark.parametrize("extra", [[], ["search.pruning.pretraining=true"], ["search.objectives=[dev,mll]"]])
def test_a_probe_longer_than_pre_training_is_refused_before_any_trial_whatever_is_pruned(tmp_path, extra):
    with pytest.raises(SearchConfigError, match=r"pretrain.probe.every=200 is longer than the shortest pre-training "
                                                r"budget \(6 steps\).*every trial would stop on it before training.*"
                                                r"set pretrain.probe.every=0"):
        study.prepare(search_cfg(*ISSUE, *extra), tmp_path)
    assert not (tmp_path / "study.db").exists()  # not a single trial recorded


class Script:
    """A fake ``run_configuration`` that raises or returns, call by call."""

    def __init__(self, make_run, steps) -> None:
        self.make_run, self.steps, self.calls = make_run, list(steps), 0

    def __call__(self, cfg, policy, overrides, seed, output_dir, run_names, *, test, callbacks):
        step = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        if isinstance(step, BaseException):
            raise step
        return self.make_run(step, None, -2.0)


def run_search(cfg, tmp_path):
    search = study.prepare(cfg, tmp_path)
    study.optimize(cfg, search, tmp_path, NAMES)
    return search.study


def test_trials_that_keep_failing_stop_the_study_naming_their_error_and_a_re_run_resumes(tmp_path, monkeypatch,
                                                                                            make_run, capsys):
    broken = ConfigError("model.config.hidden_size=30 is not a multiple of num_attention_heads=4; choose 32")
    monkeypatch.setattr(study, "run_configuration", Script(make_run, [broken, 0.25, broken]))
    cfg = search_cfg("search.n_trials=3")
    with pytest.raises(RepeatedFailures) as stopped:
        run_search(cfg, tmp_path)
    message = str(stopped.value)
    assert message.startswith("the study stopped: the last 3 trials (#2, #3, #4) failed "
                              "(search.max_consecutive_failures=3), all with the same error: ConfigError: "
                              "model.config.hidden_size=30 is not a multiple")
    assert "the 1 finished trials are kept and the study resumes" in message and "(0: never stop)" in message
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert lines[0].endswith("| best - | 1 failed in a row, time left unknown")  # no finished trial yet: no guess
    assert " s left" in lines[1] and "failed in a row" not in lines[1]
    assert [line.split(" | ")[-1].split(",")[0] for line in lines[2:]] == [f"{n} failed in a row" for n in (1, 2, 3)]
    stored = optuna.load_study(study_name="maskpolicy", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state for t in stored.trials] == [TrialState.FAIL, TrialState.COMPLETE] + [TrialState.FAIL] * 3
    assert stored.user_attrs[STOP_ATTR] == message

    # a worker that starts while the study is stopped runs nothing; the main command, started again, resumes
    monkeypatch.setattr(study, "run_configuration", Script(make_run, [0.5]))
    with pytest.raises(RepeatedFailures, match="the last 3 trials"):
        run_search(search_cfg("search.n_trials=3", "search.role=worker"), tmp_path)
    assert len(stored.trials) == 5
    resumed = run_search(cfg, tmp_path)
    assert [t.state for t in resumed.trials] == [TrialState.FAIL, TrialState.COMPLETE] + [TrialState.FAIL] * 3 + [
        TrialState.COMPLETE] * 2
    assert resumed.trials[1].value == 0.25 and not resumed.user_attrs[STOP_ATTR]


def test_zero_never_stops(tmp_path, monkeypatch, make_run):
    monkeypatch.setattr(study, "run_configuration", Script(make_run, [ValueError("x")] * 4 + [0.1]))
    finished = run_search(search_cfg("search.n_trials=1", "search.max_consecutive_failures=0"), tmp_path)
    assert [t.state for t in finished.trials] == [TrialState.FAIL] * 4 + [TrialState.COMPLETE]


def failed(study_: optuna.Study, error: str | None, surplus: bool = False) -> None:
    trial = study_.ask()
    if error is not None:
        trial.set_user_attr(faults.FAILURE_ATTR, error)
    if surplus:
        trial.set_user_attr(faults.SURPLUS_ATTR, True)
    study_.tell(trial, state=TrialState.FAIL)


def test_the_streak_counts_raised_failures_since_the_last_finished_trial_and_names_each_error():
    memory = optuna.create_study()
    failed(memory, "ValueError: a")
    memory.tell(memory.ask(), 1.0)
    failed(memory, "ValueError: b")
    failed(memory, None)                  # failed by its heartbeat (a killed worker): neither counts nor breaks
    failed(memory, "x", surplus=True)     # surplus: never ran
    failed(memory, "TaskError: c")
    assert [t.number for t in failure_streak(memory.trials)] == [2, 5]
    guard = FailureGuard(2)
    with pytest.raises(RepeatedFailures, match=r"the last 2 trials \(#2, #5\) failed \(search.max_consecutive_failures"
                                               r"=2\), with these errors: #2 ValueError: b; #5 TaskError: c"):
        guard(memory, memory.trials[-1])
    with pytest.raises(RepeatedFailures, match="the last 2 trials"):  # recorded: every other worker stops too
        FailureGuard(5).check(memory)
    with pytest.raises(ValueError, match="0 .never stop. or a number"):
        FailureGuard(-1)


def heartbeat_study(tmp_path, grace: int = 1) -> optuna.Study:
    storage = open_storage(tmp_path / "study.db", heartbeat_interval=1, grace_period=grace, max_retry=3)
    return optuna.create_study(study_name="s", storage=storage)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials asked by hand, as a sweeper does
def test_the_budget_is_exact_and_a_trial_whose_worker_died_before_its_first_beat_is_failed_and_retried(tmp_path):
    shared = heartbeat_study(tmp_path)
    budget = TrialBudget(shared, 2)
    first, second = shared.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), shared.ask()
    assert budget.exact and not budget.may_start(budget.counts())  # both slots taken by running trials
    third = shared.ask()  # created in the same instant by another worker
    assert budget.surplus(third.number) and not budget.surplus(second.number)
    shared.tell(third, state=TrialState.FAIL)
    shared.tell(second, 0.5)
    time.sleep(2.2)  # no process beats for `first` any more (a killed worker): its heartbeat, recorded as it
    budget.wait()    # began, is older than the grace period
    trials = shared.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[-1].state == TrialState.WAITING
    assert trials[-1].system_attrs["failed_trial"] == 0 and trials[-1].params == first.params
    assert budget.may_start(budget.counts())  # the queued retry may start


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_sweeper_s_heartbeat_keeps_its_trials_alive_and_a_killed_one_s_trials_are_failed(tmp_path):
    shared = heartbeat_study(tmp_path)
    alive, dead = shared.ask(), shared.ask()
    with Heartbeat(shared, [alive._trial_id]):
        time.sleep(2.5)
        faults.fail_stale(shared)
    assert [t.state for t in shared.get_trials()][:2] == [TrialState.RUNNING, TrialState.FAIL]
    assert shared.get_trials()[2].system_attrs["failed_trial"] == dead.number


def test_a_lost_database_inside_a_trial_leaves_it_to_its_heartbeat_and_its_parameters_are_retried(tmp_path,
                                                                                                     monkeypatch,
                                                                                                     make_run):
    down = sqlalchemy.exc.OperationalError("UPDATE trials", {}, ConnectionRefusedError("server closed the connection"))
    monkeypatch.setattr(study, "run_configuration", Script(make_run, [down, 0.5]))
    cfg = search_cfg("search.n_trials=1", "search.heartbeat_interval=1", "search.grace_period=1")
    finished = run_search(cfg, tmp_path)
    first, retry = finished.trials
    assert first.state == TrialState.FAIL and faults.FAILURE_ATTR not in first.user_attrs  # not the trial's fault
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == 0
    assert retry.params == first.params


def test_a_stale_retry_during_a_late_heartbeat_is_not_fatal(tmp_path, monkeypatch, make_run):
    """Another worker failed this worker's live trial as stale (its heartbeat was late): the worker goes on."""
    cfg = search_cfg("search.n_trials=1")
    search = study.prepare(cfg, tmp_path)

    def run_and_lose_the_trial(cfg, policy, overrides, seed, output_dir, run_names, *, test, callbacks):
        running = search.study.get_trials(states=(TrialState.RUNNING,))
        if len(search.study.trials) == 1:
            search.study._storage.set_trial_state_values(running[0]._trial_id, TrialState.FAIL)
        return make_run(0.5, None, -2.0)

    monkeypatch.setattr(study, "run_configuration", run_and_lose_the_trial)
    study.optimize(cfg, search, tmp_path, NAMES)
    assert [t.state for t in search.study.trials] == [TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_surplus_trial_is_failed_unrun_and_marked(tmp_path, make_run, monkeypatch):
    cfg = search_cfg("search.n_trials=1")
    search = study.prepare(cfg, tmp_path)
    monkeypatch.setattr(study, "run_configuration", Script(make_run, [0.5]))
    search.study.ask()  # another worker's trial, running
    evaluate = study.trial_function(cfg, search, tmp_path, NAMES, TrialBudget(search.study, 1))
    with pytest.raises(faults.Surplus, match="already has its 1 trials finished, running or queued"):
        evaluate(search.study.ask())
    assert search.study.trials[1].user_attrs == {faults.SURPLUS_ATTR: True}


def test_the_progress_line_of_a_surplus_trial_says_it_did_not_run():
    from maskpolicy.meta.search.progress import TrialProgress

    lines = []
    progress = TrialProgress(2, write=lines.append)
    trial = SimpleNamespace(number=7, user_attrs={faults.SURPLUS_ATTR: True})
    progress(None, trial)
    assert lines == ["trial #7 not run: the study already had its 2 trials finished, running or queued"]


# ---------------------------------------------------------------------------- a disk that fills or turns read-only


def mounted_tmpfs(folder, size: str):
    """A ``size`` tmpfs mounted at ``folder`` (as root, where mounting is allowed); skips with the reason otherwise."""
    import shutil
    import subprocess

    folder.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("disk tests skipped: mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"disk tests skipped: cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs."""
    yield from mounted_tmpfs(tmp_path / "disk", "256k")


@pytest.fixture
def run_disk(tmp_path):
    """A 1 MiB tmpfs: a tiny run's pre-training checkpoint and model fit, its fine-tuning checkpoint does not."""
    yield from mounted_tmpfs(tmp_path / "disk", "1m")


def tiny_run(folder, steps: int = 6) -> list[str]:
    """``maskpolicy-pretrain`` of a tiny model on a tiny world, its run directory under ``folder``."""
    import sys

    return [sys.executable, "-m", "maskpolicy.meta.commands.pretrain", "task.n_people=40",
            "task.biographies_per_person=2", f"pretrain.steps={steps}", "pretrain.batch_size=8",
            "pretrain.checkpoint_every=3", "finetune.epochs=2", "finetune.batch_size=8",
            "trainer.enable_progress_bar=false", "model.config.hidden_size=32", "model.config.intermediate_size=64",
            f"hydra.run.dir={folder / 'run'}"]


def assert_whole_checkpoints(run) -> None:
    """Every checkpoint left loads (files this test's own run wrote) and no temporary file is left beside them."""
    import torch

    checkpoints = sorted((run / "checkpoints").rglob("*.ckpt"))
    assert checkpoints and not list(run.rglob(".*.ckpt.*"))
    for path in checkpoints:
        assert "state_dict" in torch.load(path, map_location="cpu", weights_only=False), path


@pytest.mark.slow
def test_a_run_whose_disk_fills_stops_naming_the_fix_leaves_whole_files_and_resumes_when_there_is_room(run_disk):
    import subprocess

    command = tiny_run(run_disk)
    full = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          cwd=run_disk.parent)
    assert full.returncode != 0, full.stderr[-2000:]
    assert "DiskError: No space left on device while writing" in full.stderr, full.stderr[-2000:]
    assert "free space there (or make it writable) and run the same command again" in full.stderr
    assert_whole_checkpoints(run_disk / "run")
    assert not (run_disk / "run" / "results.json").exists()
    subprocess.run(["mount", "-o", "remount,size=16m", str(run_disk)], check=True)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                           cwd=run_disk.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming pre-training" in again.stderr + again.stdout
    assert json.loads((run_disk / "run" / "results.json").read_text())["pretrain"]["steps"] == 6


@pytest.fixture
def roomy_disk(tmp_path):
    """A 16 MiB tmpfs: room for a whole tiny run."""
    yield from mounted_tmpfs(tmp_path / "disk", "16m")


@pytest.mark.slow
def test_a_disk_made_read_only_mid_run_stops_it_naming_the_fix_and_the_run_resumes_once_writable(roomy_disk, tmp_path):
    import subprocess
    import time

    # the job log lives elsewhere: a file held open for writing would keep the disk from turning read-only
    command = [*tiny_run(roomy_disk, steps=60), f"hydra.job_logging.handlers.file.filename={tmp_path / 'job.log'}"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           stdin=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not list((roomy_disk / "run" / "checkpoints").rglob("*.ckpt")) and run.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    while subprocess.run(["mount", "-o", "remount,ro", str(roomy_disk)], capture_output=True).returncode != 0:
        assert run.poll() is None, "the run ended before its disk could be made read-only"
        time.sleep(0.05)   # busy: a file was open for writing at that instant
    _, stderr = run.communicate(timeout=300)
    assert run.returncode != 0, stderr[-2000:]
    assert "DiskError: Read-only file system while writing" in stderr, stderr[-2000:]
    assert "(or make it writable) and run the same command again" in stderr
    assert_whole_checkpoints(roomy_disk / "run")
    assert not (roomy_disk / "run" / "results.json").exists()
    subprocess.run(["mount", "-o", "remount,rw", str(roomy_disk)], check=True)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming pre-training" in again.stderr + again.stdout
    assert json.loads((roomy_disk / "run" / "results.json").read_text())["pretrain"]["steps"] == 60


def test_a_full_or_read_only_disk_stops_a_write_with_its_error_and_leaves_the_old_file_whole(small_disk):
    import errno
    import json
    import subprocess

    from maskpolicy.meta.results.files import write_json

    target = small_disk / "results.json"
    write_json(target, {"trial": 1, "value": 0.25})
    with pytest.raises(OSError) as full:
        write_json(target, {"trial": 2, "padding": "x" * 400_000})  # more than the disk holds
    assert full.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"trial": 1, "value": 0.25}  # the old file, whole
    assert [path.name for path in small_disk.iterdir()] == ["results.json"]  # no temporary file left
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(OSError) as read_only:
        write_json(target, {"trial": 3})
    assert read_only.value.errno in (errno.EROFS, errno.EACCES)
    assert json.loads(target.read_text()) == {"trial": 1, "value": 0.25}
    subprocess.run(["mount", "-o", "remount,rw,size=4m", str(small_disk)], check=True)  # space again: the re-run
    write_json(target, {"trial": 2, "padding": "x" * 400_000})
    assert json.loads(target.read_text())["trial"] == 2 and len(list(small_disk.iterdir())) == 1


def test_a_shared_grid_reoffers_a_point_whose_trial_failed_and_refuses_a_repeat(tmp_path):
    from maskpolicy.meta.search.grid import SharedGridSampler

    grid = SharedGridSampler({"x": [0, 1, 2]}, seed=0)
    shared = optuna.create_study(sampler=grid, storage=open_storage(str(tmp_path / "s.db"), heartbeat_interval=None))
    first = shared.ask()
    first.suggest_int("x", 0, 2)
    shared.tell(first, state=TrialState.FAIL)  # e.g. a surplus trial: never run, no retry queued
    done = shared.ask()
    done.suggest_int("x", 0, 2)
    shared.tell(done, 1.0)
    running = shared.ask()
    running.suggest_int("x", 0, 2)  # trial 2 holds point 2 and keeps running
    again = shared.ask()
    # Optuna's own GridSampler counts the failed point as visited and would hand out the running one again
    assert again.suggest_int("x", 0, 2) == first.params["x"]
    budget = faults.TrialBudget(shared, total=3)
    assert not budget.surplus(again.number) and not budget.grid_walked
    repeat = shared.ask()  # every point is taken now: the sampler has to repeat one
    repeat.suggest_int("x", 0, 2)
    assert budget.surplus(repeat.number) and budget.grid_walked
    assert not budget.may_start(budget.counts())  # only a queued retry may still start here


def test_a_server_refusing_while_optuna_writes_its_version_row_is_a_cannot_connect_error(monkeypatch):
    from maskpolicy.meta.search import engines

    def refused(*args, **kwargs):
        try:
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception("Connection refused"))
        except sqlalchemy.exc.OperationalError as error:  # how Optuna's scoped session reports it
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error

    monkeypatch.setattr(engines, "ReconnectingRDBStorage", refused)
    with pytest.raises(SearchConfigError, match=r"cannot connect to sqlite:///x.db: Connection refused; check"):
        engines.open_rdb("sqlite:///x.db")
