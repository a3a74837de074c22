"""hydra/sweeper=maskpolicy_optuna: sweep overrides as Optuna distributions, the run-to-trial link, and real sweeps."""

from __future__ import annotations

import csv
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from maskpolicy.meta.results.metrics import TRIAL_METRICS
from maskpolicy.meta.search.choices import GRID_TARGETS, names
from maskpolicy.meta.search.engines import build_pruner, build_sampler
from maskpolicy.meta.search.sweep import (
    PRUNER_ATTR,
    SweepError,
    check_command_line,
    config_node,
    link_overrides,
    linked_callbacks,
    linked_trial,
    parse_sweep,
    quoted,
)
from maskpolicy.meta.search.sweeper import optimization_results, sweep_directions, sweep_objectives

TINY = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=4", "pretrain.batch_size=8",
        "pretrain.checkpoint_every=4", "finetune.epochs=2", "finetune.batch_size=8", "score.passes=4",
        "score.max_sequences=20", "model.config.hidden_size=32", "model.config.intermediate_size=64"]


def test_each_sweep_expression_becomes_its_optuna_distribution():
    space = parse_sweep(["policy=choice(random,entity,span)", "policy.rate=interval(0.1,0.4)",
                         "pretrain.learning_rate=tag(log, interval(1e-4,1e-2))", "pretrain.steps=range(100,400,100)",
                         "finetune.epochs=int(interval(2,8))", "score.rate=range(0.1,0.5,0.1)", "seed=3",
                         "+extra=choice(1,2.5)"])
    assert space.distributions == {
        "policy": CategoricalDistribution(["random", "entity", "span"]),
        "policy.rate": FloatDistribution(0.1, 0.4),
        "pretrain.learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "pretrain.steps": IntDistribution(100, 300, step=100),
        "finetune.epochs": IntDistribution(2, 8),
        "score.rate": FloatDistribution(0.1, 0.4, step=0.1),
        "+extra": CategoricalDistribution([1, 2.5]),
    }
    assert space.entries["pretrain.steps"] == {"type": "int", "low": 100, "high": 300, "step": 100}  # a space entry
    assert space.entries["policy.rate"] == {"type": "float", "low": 0.1, "high": 0.4, "log": False}
    assert parse_sweep(["x=shuffle(range(1,4))"]).entries == {"x": {"type": "categorical", "choices": [1, 2, 3]}}
    assert space.fixed == ("seed=3",)
    assert space.largest("pretrain.steps") == 300 and space.largest("policy.rate") == 0.4
    assert space.largest("seed") is None


def test_a_trial_becomes_the_command_line_of_its_run():
    space = parse_sweep(["policy=choice(random,entity)", "policy.rate=interval(0.1,0.4)", "seed=3",
                         "pretrain.save_model=choice(true,false)", "score.targets=choice([all],[all,entities])"])
    overrides = space.overrides({"policy": "entity", "policy.rate": 0.25, "pretrain.save_model": False,
                                 "score.targets": "[all,entities]"})
    assert overrides == ["seed=3", "policy=entity", "policy.rate=0.25", "pretrain.save_model=false",
                         "score.targets=[all,entities]"]


@pytest.mark.parametrize(("argument", "says"), [
    ("policy.rate=interval(0.1)", "missing a required argument"),
    ("policy=choice(random,entity", "no viable alternative"),
    ("policy=glob(*)", "cannot search a glob choice sweep"),
])
def test_an_expression_the_sweeper_cannot_parse_is_an_error_that_shows_the_grammar(argument, says):
    grammar = r"choice\(a,b,…\), range\(start,stop\[,step\]\), interval\(low,high\)"
    with pytest.raises(SweepError, match=grammar) as error:
        parse_sweep([argument])
    assert says in str(error.value) and repr(argument) in str(error.value)


@pytest.mark.parametrize(("argument", "says"), [
    ("policy.rate=interval(0.4,0.1)", "interval(low,high) needs low < high"),
    ("policy.rate=tag(log, interval(0,1))", "a log interval needs low > 0"),
    ("policy=tag(log, choice(a,b))", "tag(log, …) applies to interval() and range(), not to choices"),
    ("pretrain.steps=range(5,5)", "holds no value; range(start,stop,step) stops before stop"),
])
def test_an_expression_with_an_empty_or_impossible_range_says_what_is_wrong(argument, says):
    with pytest.raises(SweepError) as error:
        parse_sweep([argument])
    assert says in str(error.value) and repr(argument) in str(error.value)


def test_the_command_line_is_checked_before_hydra_starts():
    with pytest.raises(SweepError, match="cannot parse the override 'policy.rate=interval.0.1.'"):
        check_command_line(["-m", "policy.rate=interval(0.1)"])
    check_command_line(["-m", "policy=glob(*)", "--config-name", "pretrain"])  # fine for Hydra's own sweeper
    with pytest.raises(SweepError, match="cannot search a glob"):
        check_command_line(["-m", "hydra/sweeper=maskpolicy_optuna", "policy=glob(*)"])


def test_samplers_and_pruners_come_from_the_project_config_groups():
    assert config_node("sampler", "random")._target_ == "optuna.samplers.RandomSampler"
    assert config_node("pruner", "median").n_startup_trials == 4
    assert config_node("pruner", {"_target_": "optuna.pruners.NopPruner"})._target_ == "optuna.pruners.NopPruner"
    assert config_node("sampler", "grid") == {"_target_": "optuna.samplers.GridSampler", "seed": None}
    assert config_node("sampler", "tpe").seed is None  # null: hydra.sweeper.seed
    with pytest.raises(SweepError, match="'hyperbnd' is not one of"):
        config_node("pruner", "hyperbnd")


@pytest.mark.parametrize("kind", ["sampler", "pruner"])
def test_every_sampler_and_pruner_config_is_a_sweeper_group_option_that_builds(kind):
    importlib.import_module("hydra_plugins.maskpolicy_optuna_sweeper.config")  # what Hydra's plugin scan imports
    stored = ConfigStore.instance().repo["hydra"]["sweeper"][kind]
    assert sorted(name.removesuffix(".yaml") for name in stored) == names(kind) and names(kind)
    for name in names(kind):
        node = config_node(kind, name)
        if kind == "pruner":
            if name == "threshold":  # its YAML leaves both bounds null on purpose: a sweep must give one
                node.lower = 0.05
            assert isinstance(build_pruner(node), optuna.pruners.BasePruner), name
        elif node._target_ not in GRID_TARGETS:  # a grid is given the sweep's own grid when the sweep starts
            built = build_sampler(OmegaConf.create({k: v for k, v in node.items() if k != "seed"}), seed=3)
            assert isinstance(built, optuna.samplers.BaseSampler) and node.seed is None, name


def test_values_that_are_not_plain_are_quoted_for_hydra():
    assert quoted("sqlite:////tmp/run/study.db") == "sqlite:////tmp/run/study.db"
    assert quoted("/tmp/my runs/it's.db") == "'/tmp/my runs/it\\'s.db'"
    parsed = parse_sweep([f"optuna_trial.storage={quoted(chr(47) + 'tmp/my runs/it' + chr(39) + 's.db')}"])
    assert parsed.fixed == ("optuna_trial.storage='/tmp/my runs/it\\'s.db'",)


def test_a_launched_run_reports_to_its_trial_and_the_stored_pruner_judges_it(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.set_user_attr(PRUNER_ATTR, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5})
    asked = [study.ask(), study.ask()]
    link = OmegaConf.create({"storage": storage, "study_name": "s", "number": 1, "finetune_offset": 7,
                             "start_fraction": 0.0})
    trial = linked_trial(link)
    assert trial.number == 1 and trial._trial_id == asked[1]._trial_id
    trial.report(0.9, step=7)
    assert not trial.should_prune()
    trial.report(0.2, step=8)
    assert trial.should_prune()  # the ThresholdPruner stored on the study, not the loaded study's default
    assert study.trials[1].intermediate_values == {7: 0.9, 8: 0.2}
    cfg = OmegaConf.create({"optuna_trial": link, "pretrain": {"probe": {"every": 0, "target": "answers"}}})
    callbacks = linked_callbacks(cfg, trial)
    assert [type(c).__name__ for c in callbacks.finetuning] == ["OptunaPruning"]
    assert callbacks.finetuning[0].step_offset == 7 and list(callbacks.pretraining(None)) == []
    assert linked_trial(OmegaConf.create({"storage": None, "study_name": None, "number": None})) is None
    with pytest.raises(SweepError, match="not a study in"):
        linked_trial({**link, "study_name": "other"})


def test_link_overrides_name_storage_study_and_trial():
    assert link_overrides("/tmp/a b/s.db", "s", 3, 7, 0.5) == [
        "optuna_trial.storage='/tmp/a b/s.db'", "optuna_trial.study_name=s", "optuna_trial.number=3",
        "optuna_trial.finetune_offset=7", "optuna_trial.start_fraction=0.5"]


def test_objectives_name_the_registry_and_directions_follow_them():
    assert sweep_directions(None, ()) == ["maximize"]  # maskpolicy-pretrain's own value: its dev metric
    assert sweep_directions(None, sweep_objectives(["dev", "mll"])) == ["maximize", "maximize"]
    assert sweep_directions(["minimize"], ()) == ["minimize"]
    with pytest.raises(SweepError, match=r"hydra.sweeper.objectives must be a non-empty list"):
        sweep_objectives(["accuracy"])
    with pytest.raises(SweepError, match="gives 1 directions for 2 objectives"):
        sweep_directions("maximize", ("dev", "mll"))
    with pytest.raises(SweepError, match="minimize, maximize or a list of them"):
        sweep_directions("down", ())


def test_optimization_results_of_an_empty_study_say_so():
    empty = optuna.create_study()
    assert OmegaConf.create(optimization_results(empty)) == {"name": "optuna", "best_params": None,
                                                              "best_value": None}


def test_the_plugin_hydra_imports_at_every_app_start_loads_neither_torch_nor_the_search():
    plugin = "hydra_plugins.maskpolicy_optuna_sweeper"
    heavy = ("torch", "pytorch_lightning", "maskpolicy.meta.search.sweeper")
    probe = f"import sys, {plugin}.config, {plugin}.sweeper; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------- real sweeps


def sweep(tmp_path: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "maskpolicy.meta.commands.pretrain", "-m", "hydra/sweeper=maskpolicy_optuna",
               *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def study_of(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="maskpolicy_sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")


@pytest.mark.slow
def test_a_sweep_runs_its_trials_and_a_second_run_continues_the_study(tmp_path):
    done = sweep(tmp_path, "policy=choice(random,span)", "policy.rate=interval(0.1,0.3)", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.sampler=random")
    study = study_of(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(set(t.params) == {"policy", "policy.rate"} and 0.1 <= t.params["policy.rate"] <= 0.3
               for t in study.trials)
    for trial in study.trials:  # each run wrote its results with the trial's values; its value is dev EM
        results = json.loads((tmp_path / "sweep" / str(trial.number) / "results.json").read_text())
        assert results["policy"]["name"] == trial.params["policy"]
        assert results["policy"]["params"]["rate"] == pytest.approx(trial.params["policy.rate"])
        assert results["downstream"]["dev_em"] == trial.value
    assert [line.split(" #")[0] for line in done.stdout.splitlines() if line.startswith("trial ")] == [
        "trial 1/2", "trial 2/2"]
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert summary["trials"] == {"complete": 2} and summary["best"]["number"] == study.best_trial.number
    sweep(tmp_path, "policy=choice(random,span)", "policy.rate=interval(0.1,0.3)", "hydra.sweeper.n_trials=3",
          "hydra.sweeper.sampler=random")
    assert len(study_of(tmp_path).trials) == 3  # resumed: one more trial, the first two kept


@pytest.mark.slow
def test_the_pruner_stops_a_launched_run_mid_fine_tuning(tmp_path):
    sweep(tmp_path, "policy=choice(random,span)", "hydra.sweeper.n_trials=2", "finetune.epochs=3",
          "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=2.0")
    study = study_of(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    # fine-tuning epoch 0 is reported at pretrain.steps + 1 = 5, and the pruner stopped the run there
    assert all(list(t.intermediate_values) == [5] for t in study.trials)
    run_dir = tmp_path / "sweep" / "0"
    assert not (run_dir / "results.json").exists()
    with open(run_dir / "finetune" / "metrics.csv") as handle:
        assert {row["epoch"] for row in csv.DictReader(handle)} == {"0"}  # of finetune.epochs=3


@pytest.mark.slow
def test_the_joblib_launcher_runs_trials_side_by_side(tmp_path):
    sweep(tmp_path, "policy=choice(random,span)", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
          "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "pretrain.steps=2", "finetune.epochs=1")
    study = study_of(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all((tmp_path / "sweep" / str(n) / "results.json").exists() for n in (0, 1))


@pytest.mark.slow
def test_an_unparsable_sweep_expression_stops_before_any_run(tmp_path):
    done = sweep(tmp_path, "policy.rate=interval(0.1)", check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "cannot parse the sweep override 'policy.rate=interval(0.1)'" in done.stderr
    assert "interval(low,high)" in done.stderr and not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_runs_that_keep_failing_stop_the_sweep_naming_their_error(tmp_path):
    done = sweep(tmp_path, "policy=choice(random,span)", "policy.rate=interval(1.5,2.0)", "hydra.sweeper.n_trials=5",
                 "hydra.sweeper.max_consecutive_failures=2", check=False)
    assert done.returncode != 0
    assert ("the study stopped: the last 2 trials (#0, #1) failed (hydra.sweeper.max_consecutive_failures=2), all "
            "with the same error but for its numbers, the last: PolicyError: policy: masking rate must be in (0, 1]"
            ) in done.stderr and "Heartbeat of storage" not in done.stderr
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.FAIL] * 2  # stopped: no third run


@pytest.mark.slow
def test_a_sweep_killed_mid_batch_leaves_a_trial_the_next_one_fails_and_runs_again_first(tmp_path):
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", "hydra.sweeper.n_trials=2",
            "policy=choice(random,span)", "policy.rate=interval(0.1,0.3)", "hydra.sweeper.sampler=random"]
    command = [sys.executable, "-m", "maskpolicy.meta.commands.pretrain", "-m", "hydra/sweeper=maskpolicy_optuna",
               *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}", *beat, "pretrain.steps=2000",
               "pretrain.checkpoint_every=2000"]
    killed = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, env={**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "sweep" / "0" / "pretrain" / "metrics.csv").exists():  # its first run pre-trains
            assert time.monotonic() < deadline and killed.poll() is None, "the sweep never started its first run"
            time.sleep(0.5)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    before = study_of(tmp_path).trials
    assert [t.state for t in before] == [TrialState.RUNNING]  # ask-and-tell: nobody told it
    time.sleep(4)  # past the grace period of its last heartbeat
    done = sweep(tmp_path, *beat)
    trials = study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == before[0].params  # retried first
    first = next(line for line in done.stdout.splitlines() if line.startswith("trial "))
    assert first.startswith("trial 1/2 #1 ")
    assert (tmp_path / "sweep" / "1" / "results.json").exists()  # run directories are named by trial number
    assert not (tmp_path / "sweep" / "0" / "results.json").exists()


@pytest.mark.slow
def test_a_pretrain_sweep_optimises_registered_objectives_and_records_each(tmp_path):
    sweep(tmp_path, "policy=choice(random,span)", "hydra.sweeper.n_trials=2", "hydra.sweeper.objectives=[dev,mll]",
          "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=5")
    study = study_of(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    for trial in study.trials:  # each run returned its dev EM and its MLL score, read by the metric registry
        results = json.loads((tmp_path / "sweep" / str(trial.number) / "results.json").read_text())
        assert trial.values == [results["downstream"]["dev_em"], results["mll"]["nats_per_token"]]
        assert set(trial.user_attrs["metrics"]) == set(TRIAL_METRICS) and trial.user_attrs["seconds"] > 0
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert summary["objectives"] == ["dev", "mll"] and summary["best"] is None
    assert "solutions" in OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
