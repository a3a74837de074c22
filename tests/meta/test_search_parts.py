"""Samplers, pruners and storages by name; every bad setting fails before training."""

from __future__ import annotations

import os
import time

import optuna
import pytest
from optuna.trial import TrialState

from maskpolicy.meta.search.engines import (
    PRUNERS,
    SAMPLERS,
    SearchConfigError,
    build_pruner,
    build_sampler,
    open_storage,
)
from maskpolicy.meta.search.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = SearchSpace.from_config({
    "families": {
        "random": {"rate": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}},
        "span": {"rate": {"type": "categorical", "choices": [0.15, 0.3]}, "max_length": {"type": "int", "low": 2,
                                                                                         "high": 4}},
    },
})


def objective(trial: optuna.Trial) -> float:
    suggestion = SPACE.suggest(trial)
    return float(suggestion.policy["rate"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # CMA-ES and GP sample conditional parameters independently
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_and_drives_the_space(name):
    sampler = build_sampler(name, seed=0, space=SPACE)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    if name == "nsga2":
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(lambda trial: (objective(trial), trial.number), n_trials=4)
    else:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(objective, n_trials=4)
    assert all(trial.state == TrialState.COMPLETE for trial in study.trials)


def test_tpe_defaults_to_multivariate_group_sampling_and_takes_options():
    sampler = build_sampler("tpe", seed=3, n_startup_trials=2)
    assert sampler._multivariate is True and sampler._group is True and sampler._n_startup_trials == 2


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(SearchConfigError, match="unknown sampler 'bayes'; choose one of tpe, random, grid"):
        build_sampler("bayes")


def test_grid_sampler_needs_the_space():
    with pytest.raises(SearchConfigError, match="needs the search space"):
        build_sampler("grid", seed=0)


def test_a_bad_sampler_option_is_a_config_error():
    with pytest.raises(SearchConfigError, match="sampler 'tpe' cannot be built with .*bogus"):
        build_sampler("tpe", bogus=1)


PRUNER_OPTIONS = {"threshold": {"lower": 0.1}}


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_builds(name):
    pruner = build_pruner(name, **PRUNER_OPTIONS.get(name, {}))
    assert isinstance(pruner, optuna.pruners.BasePruner)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    trial.report(0.5, step=0)
    assert isinstance(trial.should_prune(), bool)


def test_unknown_pruner_and_bad_options_are_config_errors():
    with pytest.raises(SearchConfigError, match="unknown pruner 'early'; choose one of none, median"):
        build_pruner("early")
    with pytest.raises(SearchConfigError, match="Either lower or upper"):
        build_pruner("threshold")


def two_studies_share_trials(location) -> None:
    first = optuna.create_study(study_name="s", storage=open_storage(location), load_if_exists=True)
    first.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    second = optuna.create_study(study_name="s", storage=open_storage(location), load_if_exists=True)
    second.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert len(first.trials) == len(second.trials) == 3


@pytest.mark.parametrize("form", ["path", "url"])
def test_sqlite_storage_is_shared_between_studies(tmp_path, form):
    path = tmp_path / "study.db"
    two_studies_share_trials(path if form == "path" else f"sqlite:///{path}")
    assert path.exists()


@pytest.mark.parametrize("form", ["journal:{}/study.txt", "{}/study.log", "{}/study.journal"])
def test_journal_file_storage_is_shared_between_studies(tmp_path, form):
    location = form.format(tmp_path)
    assert isinstance(open_storage(location), optuna.storages.JournalStorage)
    two_studies_share_trials(location)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_rdb_storage_has_a_heartbeat_and_retries_a_dead_workers_trial(tmp_path):
    storage = open_storage(tmp_path / "study.db", heartbeat_interval=1, grace_period=1, max_retry=1)
    assert storage.get_heartbeat_interval() == 1
    study = optuna.create_study(study_name="s", storage=storage)
    dead = study.ask()  # a worker draws parameters, beats once and is killed
    dead.suggest_float("x", 0, 1)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.1)
    optuna.storages.fail_stale_trials(study)  # what the next worker's study.optimize does first
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == study.trials[0].params


def test_in_memory_storage_by_default():
    assert isinstance(open_storage(None), optuna.storages.InMemoryStorage)


def test_an_unreachable_database_is_a_config_error():
    with pytest.raises(SearchConfigError, match=r"nobody@127.0.0.1:1/x: .*(driver is missing|cannot connect)"):
        open_storage("postgresql://nobody@127.0.0.1:1/x")


@pytest.mark.parametrize("form", ["{}/missing/study.db", "sqlite:///{}/missing/study.db", "journal:{}/missing/j.log"])
def test_a_missing_directory_is_a_config_error(tmp_path, form):
    with pytest.raises(SearchConfigError, match=r"directory .*missing does not exist; create it \(mkdir -p"):
        open_storage(form.format(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_directory_is_a_config_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(SearchConfigError, match="no write permission"):
            open_storage(tmp_path / "study.db")
    finally:
        tmp_path.chmod(0o700)


@pytest.mark.parametrize(("location", "message"), [
    ("study.txt", "cannot tell what storage 'study.txt' is"),
    ("nosuchdb://host/x", "SQLAlchemy knows no database 'nosuchdb'"),
    ("postgresql://user@host:port/x", "not a database URL"),
])
def test_other_bad_locations_are_config_errors(location, message):
    with pytest.raises(SearchConfigError, match=message):
        open_storage(location)
