"""Samplers, pruners and storages by name; every bad setting fails before training."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_module
from optuna.trial import TrialState

from maskpolicy.meta.config import ConfigError
from maskpolicy.meta.search.engines import SearchConfigError, build_pruner, build_sampler, open_storage
from maskpolicy.meta.search.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
CONF = Path(__file__).resolve().parents[2] / "conf" / "search"
SAMPLERS = sorted(p.stem for p in (CONF / "sampler").glob("*.yaml"))
PRUNERS = sorted(p.stem for p in (CONF / "pruner").glob("*.yaml"))
SPACE_CONFIG = {
    "families": {
        "random": {"rate": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}},
        "span": {"rate": {"type": "categorical", "choices": [0.15, 0.3]}, "max_length": {"type": "int", "low": 2,
                                                                                         "high": 4}},
    },
}
SPACE = SearchSpace.from_config(SPACE_CONFIG)


def search_config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("search", overrides=list(overrides))
    cfg.search.space = SPACE_CONFIG
    return cfg.search


def objective(trial: optuna.Trial) -> float:
    return float(SPACE.suggest(trial).policy["rate"])


def test_the_sampler_and_pruner_groups_hold_optunas_engines():
    assert {"tpe", "random", "grid", "brute_force", "gp", "cmaes", "nsga2"} <= set(SAMPLERS)
    assert {"none", "median", "percentile", "successive_halving", "hyperband", "threshold", "wilcoxon"} <= set(PRUNERS)


@pytest.mark.filterwarnings("ignore::UserWarning")  # CMA-ES and GP sample conditional parameters independently
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_config_drives_the_space_reproducibly(name):
    def drawn(seed: int) -> list[dict]:
        sampler = build_sampler(search_config(f"search/sampler={name}").sampler, seed=seed)
        if name == "nsga2":
            study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
            study.optimize(lambda trial: (objective(trial), trial.number), n_trials=4)
        else:
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.optimize(objective, n_trials=4)
        assert all(trial.state == TrialState.COMPLETE for trial in study.trials)
        return [trial.params for trial in study.trials]

    assert drawn(7) == drawn(7)


def test_the_grid_sampler_walks_the_configured_space():
    sampler = build_sampler(search_config("search/sampler=grid").sampler, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=40)
    keys = ("family", "random.rate", "span.rate", "span.max_length")
    seen = {tuple(t.params.get(key) for key in keys) for t in study.trials}
    assert {(f, r) for f, r, _, _ in seen if f == "random"} == {("random", 0.1), ("random", 0.2), ("random", 0.3)}
    assert {(s, m) for f, _, s, m in seen if f == "span"} == {(s, m) for s in (0.15, 0.3) for m in (2, 3, 4)}


def test_a_bad_sampler_option_is_a_config_error():
    node = search_config("+search.sampler.bogus=1").sampler
    with pytest.raises(ConfigError, match="could not build the sampler from its config: .*bogus"):
        build_sampler(node, seed=0)


PRUNER_OVERRIDES = {"threshold": ["search.pruner.lower=0.5"]}
STEPS, GOOD = 10, 12


def learning_curves(pruner: optuna.pruners.BasePruner, lagging: int = 3) -> optuna.Study:
    """``GOOD`` trials at 1.0 for ``STEPS`` epochs, then ``lagging`` trials at 0.0; a pruned trial records its epoch."""
    def curve(trial: optuna.Trial) -> float:
        value = 1.0 if trial.number < GOOD else 0.0
        for step in range(STEPS):
            trial.report(value, step=step)
            if trial.should_prune():
                trial.set_user_attr("pruned_at", step)
                raise optuna.TrialPruned()
        return value

    # Hyperband assigns brackets by a hash of the study name: a fixed name keeps the test deterministic.
    study = optuna.create_study(study_name="learning-curves", direction="maximize", pruner=pruner)
    study.optimize(curve, n_trials=GOOD + lagging)
    return study


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_stops_the_trials_far_behind_the_others(name):
    pruner = build_pruner(search_config(f"search/pruner={name}", *PRUNER_OVERRIDES.get(name, [])).pruner)
    states = [trial.state for trial in learning_curves(pruner).trials]
    assert states[:GOOD] == [TrialState.COMPLETE] * GOOD
    assert states[GOOD:] == [TrialState.COMPLETE if name == "none" else TrialState.PRUNED] * 3


def test_the_median_pruner_waits_for_its_warm_up_epochs():
    node = search_config().pruner
    study = learning_curves(build_pruner(node), lagging=1)
    assert study.trials[-1].user_attrs["pruned_at"] == node.n_warmup_steps


def test_a_threshold_pruner_without_bounds_says_what_is_missing():
    with pytest.raises(ConfigError, match="Either lower or upper"):
        build_pruner(search_config("search/pruner=threshold").pruner)


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
    expected = r"(cannot connect to postgresql://nobody@127.0.0.1:1/x: .*refused.*server is running|" \
               r"nobody@127.0.0.1:1/x: its database driver is missing)"
    with pytest.raises(SearchConfigError, match=expected):
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
