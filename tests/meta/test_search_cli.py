"""maskpolicy-search end to end, in real subprocesses: results, resume, kill, workers, failures, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from maskpolicy.meta.learning.artifacts import load_policy, read_card, save_policy
from maskpolicy.meta.results.metrics import TRIAL_METRICS
from maskpolicy.policies import PORTABLE_FEATURES, LearnedPolicy, MaskingPolicy, available

pytestmark = pytest.mark.slow

TINY = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=6", "pretrain.batch_size=8",
        "pretrain.checkpoint_every=6", "finetune.epochs=2", "finetune.batch_size=8", "score.passes=4",
        "score.max_sequences=20", "trainer.enable_progress_bar=false", "search.n_workers=1",
        "search.final.seeds=[1]", "search.heartbeat_interval=1", "search.grace_period=3", "pretrain.probe.every=3",
        "pretrain.probe.passes=2", "pretrain.probe.max_sequences=10"]


def command(*overrides: str) -> list[str]:
    flags = [o for o in overrides if o.startswith("--")]  # Hydra's flags go before the overrides
    rest = [o for o in overrides if o not in flags]
    return [sys.executable, "-m", "maskpolicy.meta.commands.search", *flags, *TINY, *rest]


def run(*overrides: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command(*overrides), cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"}, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def study_of(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="maskpolicy", storage=f"sqlite:///{run_dir / 'study.db'}")


def test_a_search_writes_leaderboard_report_and_best_policy(tmp_path):
    out = tmp_path / "run"
    run("search.n_trials=4", f"hydra.run.dir={out}", cwd=tmp_path)
    study = study_of(out)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4
    board = json.loads((out / "leaderboard.json").read_text())
    families = {t.params["family"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert {row["family"] for row in board} == families and [row["rank"] for row in board] == list(
        range(1, len(board) + 1))
    assert all(row["test_em"] is not None and row["seeds"] == 1 for row in board)
    assert (out / "leaderboard.csv").read_text().startswith("rank,label,family")
    summary = json.loads((out / "search.json").read_text())
    assert summary["finished_trials"] == 4 and summary["best"]["label"] == board[0]["label"]
    html = (out / "report.html").read_text()
    assert "<script src" not in html and "data:image/png;base64," in html
    assert (out / "best_policy.yaml").is_file()
    best = load_policy(out / "best_policy")  # a policy folder whatever the winning family
    assert isinstance(best, MaskingPolicy) and read_card(out / "best_policy")["policy"]["name"] in available()
    # the search never touched test: neither its trial records nor its trial runs hold a test metric
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        recorded = set(trial.user_attrs["metrics"])
        assert recorded == set(TRIAL_METRICS) and not {"test_em", "test_f1"} & recorded
        downstream = json.loads((out / f"trials/{trial.number:04d}/results.json").read_text())["downstream"]
        assert downstream["test_em"] is None and downstream["test_f1"] is None and downstream["dev_em"] >= 0
        probe = json.loads((out / f"trials/{trial.number:04d}/results.json").read_text())["pretrain"]["probe"]
        assert [step for step, _ in probe] == [3, 6]  # a trial probes its pre-training for the pruner
    finals = sorted(out.glob("final/*/seed-*/results.json"))
    assert finals and all(json.loads(f.read_text())["downstream"]["test_em"] is not None for f in finals)
    assert all(json.loads(f.read_text())["pretrain"]["probe"] == [] for f in finals)  # a final run is never pruned
    assert {f.parent.name for f in finals} == {"seed-1"} and summary["final_seeds"] == [1]


def test_re_running_resumes_and_tops_up_the_study(tmp_path):
    out = tmp_path / "run"
    run("search.n_trials=2", "search.role=worker", f"hydra.run.dir={out}", cwd=tmp_path)  # no final runs: faster
    first = {t.number: t.params for t in study_of(out).get_trials()}
    run("search.n_trials=3", f"hydra.run.dir={out}", cwd=tmp_path)
    trials = study_of(out).get_trials()
    assert len(trials) == 3 and {t.number: t.params for t in trials if t.number in first} == first


def test_a_killed_worker_is_resumed_and_its_trial_retried(tmp_path):
    out = tmp_path / "run"
    slow = ["pretrain.steps=400", "search.n_trials=2", f"hydra.run.dir={out}"]
    process = subprocess.Popen(command(*slow), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "study.db").exists() and any((out / "trials").glob("*/pretrain/metrics.csv")):
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = [t for t in study_of(out).get_trials() if t.state != TrialState.WAITING]  # WAITING: queued, not begun
    assert [t.state for t in killed] == [TrialState.RUNNING]
    time.sleep(4)  # past the grace period: the next start marks the silent trial failed
    run("search.n_trials=2", "pretrain.steps=6", f"hydra.run.dir={out}", cwd=tmp_path)
    trials = study_of(out).get_trials()
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retried and retried[0].params == killed[0].params
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2


def test_two_workers_record_every_trial_exactly_once(tmp_path):
    out = tmp_path / "run"
    run("search.n_trials=4", "search.n_workers=2", f"hydra.run.dir={out}", cwd=tmp_path)
    trials = study_of(out).get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))) and len(trials) >= 4
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) >= 4
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{n:04d}" for n in sorted(numbers)]
    assert (out / "workers/worker-1.out").exists()
    # the final re-runs ran side by side in two processes, one per family's best trial
    finals = sorted(out.glob("final/*/seed-1/results.json"))
    board = json.loads((out / "leaderboard.json").read_text())
    assert len(finals) == len(board) >= 2 and all(row["test_em"] is not None for row in board)


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path):
    out = tmp_path / "run"
    space = ["search.space.families={entity: {rate: 0.9, shortfall: error}, random: {rate: 0.2}}"]
    run("search.n_trials=3", "search.sampler=random", *space, f"hydra.run.dir={out}", cwd=tmp_path)
    trials = study_of(out).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("BudgetError" in t.user_attrs["failure"] for t in failed)
    assert all(t.params["family"] == "entity" for t in failed)
    assert any(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["search/sampler=annealing"], "Could not find 'search/sampler/annealing'"),
     (["search/pruner=early"], "Could not find 'search/pruner/early'"),
     (["search.final.seeds=[0,1]"], "search.final.seeds [0, 1] include the search's seed 0"),
     (["search.space.families=null"], "the search space has no families"),
     (["search.storage=postgresql://nobody@127.0.0.1:1/none"], "postgresql"),
     (["search.objectives=[accuracy]"], "search.objectives must be"),
     (["+search.space.budget={pretrain.stepz: 5}"], "the run config does not have")],
)
def test_bad_settings_fail_before_any_training(tmp_path, overrides, message):
    out = tmp_path / "run"
    done = run(*overrides, f"hydra.run.dir={out}", cwd=tmp_path, check=False)
    assert done.returncode != 0 and message in done.stderr
    assert not (out / "trials").exists()


def test_multirun_gives_one_study_per_combination_and_a_combined_leaderboard(tmp_path):
    sweep = tmp_path / "sweep"
    run("--multirun", "seed=0,1", "search.n_trials=2", "search.final.seeds=null", "search.final.n_seeds=1",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert (sweep / "0/study.db").exists() and (sweep / "1/study.db").exists()
    rows = json.loads((sweep / "leaderboard.json").read_text())
    assert {row["study"] for row in rows} == {"seed=0", "seed=1"}
    assert {p.name for p in sweep.glob("0/final/*/seed-*")} == {"seed-1"}  # the seed after each study's own
    assert {p.name for p in sweep.glob("1/final/*/seed-*")} == {"seed-2"}


def test_two_objectives_and_a_transferred_policy(tmp_path):
    save_policy(LearnedPolicy(features=PORTABLE_FEATURES), tmp_path / "saved", {"method": "supervised"})
    out = tmp_path / "run"
    run("search.n_trials=3", "search.objectives=[dev_em,mll]", f"search.transfer_from={tmp_path / 'saved'}",
        f"hydra.run.dir={out}", cwd=tmp_path)
    study = study_of(out)
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.best_trials)
    board = json.loads((out / "leaderboard.json").read_text())
    transfer = [row for row in board if row["source"] == "transfer"]
    assert len(transfer) == 1 and transfer[0]["params"]["path"] == str((tmp_path / "saved").resolve())
    assert "Pareto" in (out / "report.html").read_text()


def test_an_mll_search_is_not_pruned_on_dev_em_and_ranks_and_labels_by_mll(tmp_path):
    out = tmp_path / "run"
    run("search.n_trials=3", "search.objectives=[mll]", "search/pruner=threshold", "search.pruner.lower=2.0",
        "search.pruning.pretraining=false", f"hydra.run.dir={out}", cwd=tmp_path)
    trials = study_of(out).get_trials()
    # a threshold of 2.0 EM would prune every trial on dev EM at its first epoch; on MLL nothing can be pruned
    assert all(t.state == TrialState.COMPLETE and not t.intermediate_values for t in trials)
    assert all(t.value == t.user_attrs["metrics"]["mll_nats_per_token"] for t in trials)
    board = json.loads((out / "leaderboard.json").read_text())
    scores = [row["mll_nats_per_token"] for row in board]
    assert scores == sorted(scores, reverse=True)
    html = (out / "report.html").read_text()
    assert "MLL score (nats/token)" in html and json.loads((out / "search.json").read_text())["objectives"] == ["mll"]


def test_pruning_during_pre_training_stops_a_trial_at_its_first_probe(tmp_path):
    out = tmp_path / "run"
    # the probe's score is a negative number of nats per token: a lower threshold of 0 prunes at its first value
    run("search.n_trials=2", "search/pruner=threshold", "search.pruner.lower=0.0", "search.pruning.start_fraction=0",
        f"hydra.run.dir={out}", cwd=tmp_path)
    study = study_of(out)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [3] and t.intermediate_values[3] < 0 for t in trials)
    assert study.user_attrs["pruning"] == {"probe_every": 3, "probe_target": "answers", "start_fraction": 0.0,
                                           "finetune_offset": 7, "finetune_monitor": "dev/em"}
    for trial in trials:  # stopped at step 3 of 6: no fine-tuning, no results
        assert not (out / f"trials/{trial.number:04d}/finetune").exists()
        assert not (out / f"trials/{trial.number:04d}/results.json").exists()
    assert "pre-training step" in (out / "report.html").read_text()
