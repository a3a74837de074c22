"""What runs show a person: one line per trial, no bars or library chatter under CI, the detail in log files."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from maskpolicy.meta import console
from maskpolicy.meta.search.progress import FinalProgress, TrialProgress, duration

TINY = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=4", "pretrain.batch_size=8",
        "pretrain.checkpoint_every=4", "finetune.epochs=2", "finetune.batch_size=8", "score.passes=4",
        "score.max_sequences=20", "model.config.hidden_size=32", "model.config.intermediate_size=64"]
CHATTER = ("GPU available", "Tip:", "it/s]", "Epoch ", "Writing model shards", "Restoring states", "UserWarning")
LINE = re.compile(r"^trial \d+/\d+ #\d+( \S+)?: (\d\.\d{4}|pruned at step \d+|failed.*) "
                  r"\| best (-|\d\.\d{4} \(#\d+\)) \| (\d+ failed in a row, )?(\d+ (s|min) left|\d\.\d h left|done|"
                  r"time left unknown)$")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_trial_with_value_best_so_far_and_time_left():
    study = optuna.create_study(direction="maximize")
    lines, clock = [], Clock()
    progress = TrialProgress(4, write=lines.append, clock=clock)
    for value, seconds in ((0.25, 30.0), (0.5, 60.0)):
        trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["entity"])})
        clock.now += seconds
        study.tell(trial, value)
        progress(study, study.trials[-1])
    pruned = study.ask()
    pruned.report(0.1, step=7)
    clock.now += 30.0
    study.tell(pruned, state=TrialState.PRUNED)
    progress(study, study.trials[-1])
    assert lines == [
        "trial 1/4 #0 entity: 0.2500 | best 0.2500 (#0) | 2 min left",     # 30 s a trial, 3 left
        "trial 2/4 #1 entity: 0.5000 | best 0.5000 (#1) | 2 min left",     # 45 s a trial, 2 left
        "trial 3/4 #2: pruned at step 7 | best 0.5000 (#1) | 40 s left",   # 40 s a trial, 1 left
    ]
    progress.summary(study)
    assert lines[-1] == "study " + study.study_name + ": 2 complete, 1 pruned; best 0.5000 (#1); 2 min in this session"
    assert all(LINE.match(line) for line in lines[:3])


def test_failures_are_not_progress_the_line_says_how_many_failed_in_a_row_and_guesses_no_time():
    study = optuna.create_study(direction="maximize")
    lines, clock = [], Clock()
    progress = TrialProgress(3, write=lines.append, clock=clock)
    for outcome in ("fail", "fail", 0.5, "fail"):
        trial = study.ask()
        clock.now += 1.0 if outcome == "fail" else 40.0
        if outcome == "fail":
            trial.set_user_attr("failure", "ConfigError: bad")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, outcome)
        progress(study, study.trials[-1])
    assert lines == [
        "trial 0/3 #0: failed: ConfigError: bad | best - | 1 failed in a row, time left unknown",
        "trial 0/3 #1: failed: ConfigError: bad | best - | 2 failed in a row, time left unknown",
        "trial 1/3 #2: 0.5000 | best 0.5000 (#2) | 84 s left",   # 42 s per finished trial, 2 left
        "trial 1/3 #3: failed: ConfigError: bad | best 0.5000 (#2) | 1 failed in a row, 86 s left",
    ]
    assert all(LINE.match(line) for line in lines)


def test_one_line_per_final_run_with_its_test_score_counting_runs_read_back(make_run):
    lines, clock = [], Clock()
    progress = FinalProgress(4, done=1, write=lines.append, clock=clock)
    for label, seed, test in (("entity", 1, 0.3125), ("random", 1, 0.25), ("random", 2, None)):
        clock.now += 60.0
        progress(label, seed, make_run(0.3, test, -2.0))
    assert lines == ["final 2/4 entity seed 1: test EM 0.3125 | 2 min left",   # 60 s a run here, 2 left
                     "final 3/4 random seed 1: test EM 0.2500 | 60 s left",
                     "final 4/4 random seed 2: no test score | done"]


def test_durations_read_in_the_unit_a_person_expects():
    assert [duration(s) for s in (4.2, 89, 90, 3599, 5400, 36000)] == ["4 s", "89 s", "2 min", "60 min", "1.5 h",
                                                                        "10.0 h"]


@pytest.mark.parametrize(("ci", "tty", "shown"), [("", True, True), ("true", True, False), ("", False, False),
                                                   ("1", True, False)])
def test_bars_only_for_a_person_at_a_terminal(monkeypatch, ci, tty, shown):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(sys, "stdout", type("Out", (io.StringIO,), {"isatty": lambda self: tty})())
    assert console.show_bars() is shown
    with console.no_bars():
        assert console.show_bars() is False
    assert console.progress([1, 2], "x") == [1, 2] if not shown else list(console.progress([1, 2], "x")) == [1, 2]


def test_a_run_log_takes_the_libraries_records_and_warnings_and_gives_them_back(tmp_path):
    library = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    before = logging.getLogger("pytorch_lightning").handlers[:], logging.getLogger("pytorch_lightning").propagate
    with console.run_log(tmp_path / "trial" / "run.log"):
        library.warning("GPU available: False, used: False")
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        logging.getLogger("maskpolicy.meta.pipeline").warning("our own line")
        assert console.show_bars() is False
    text = (tmp_path / "trial" / "run.log").read_text()
    assert "GPU available: False" in text and "a library warning" in text and "our own line" not in text
    assert (logging.getLogger("pytorch_lightning").handlers, logging.getLogger("pytorch_lightning").propagate) == before


def test_the_console_keeps_this_projects_lines_and_warnings_and_drops_the_libraries():
    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)

    project_file = Path(console.__file__)
    library_file = Path(logging.__file__)
    assert console._not_from_library(record("maskpolicy.meta.pipeline", "resuming pre-training"))
    assert console._not_from_library(record("py.warnings", f"{project_file}:3: UserWarning: rank-deficient"))
    assert not console._not_from_library(record("py.warnings", f"{library_file}:3: UserWarning: deprecated"))
    assert not console._not_from_library(record("pytorch_lightning.utilities.rank_zero", "GPU available: False"))
    assert not console._not_from_library(record("lightning_fabric", "Seed set"))


@pytest.mark.slow
def test_a_ci_run_prints_no_bars_or_library_chatter_and_logs_it_to_the_run_log(tmp_path):
    command = [sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *TINY, f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stdout + done.stderr
    assert not [word for word in CHATTER if word in shown], shown
    assert "on bioworld (closed_book_qa): dev EM" in shown  # the run's own summary line stays
    log = (tmp_path / "run" / "pretrain.log").read_text()
    assert "GPU available: False" in log and "`Trainer.fit` stopped" in log


@pytest.mark.slow
def test_a_search_shows_one_line_per_trial_and_keeps_each_trials_detail_in_its_log(tmp_path):
    command = [sys.executable, "-m", "maskpolicy.meta.commands.search", *TINY, "search.n_trials=2",
               "search.final.seeds=[1]", "pretrain.probe.every=2", "pretrain.probe.passes=2",
               "pretrain.probe.max_sequences=8", f"hydra.run.dir={tmp_path}/s"]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trial_lines = [line for line in done.stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all(LINE.match(line) for line in trial_lines), trial_lines
    assert trial_lines[-1].endswith("| done")
    final_lines = [line for line in done.stdout.splitlines() if line.startswith("final ")]
    assert final_lines and final_lines[-1].endswith("| done"), done.stdout[-2000:]
    assert all(re.match(r"^final \d+/\d+ \S+ seed 1: test EM \d\.\d{4} \| ", line) for line in final_lines)
    assert not [word for word in CHATTER if word in done.stdout + done.stderr]
    assert "Trial 0 finished" not in done.stderr  # Optuna's own line, which the trial line replaces
    assert "GPU available: False" in (tmp_path / "s" / "trials" / "0000" / "run.log").read_text()
