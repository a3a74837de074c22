"""The search on real database servers started by the test set-up (PostgreSQL: the ``postgres`` fixture; MariaDB,
for MySQL: ``mariadb``), each case on each server: workers in real processes sharing one study, a SIGKILLed
worker, a server restart mid-study, and bad connection settings.

Each worker is ``maskpolicy-search search.role=worker`` with its own run directory, as on its own machine.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from hydra import compose, initialize_config_module
from optuna.trial import TrialState

from maskpolicy.meta.search import engines
from maskpolicy.meta.search.engines import (
    ReconnectingRDBStorage,
    SearchConfigError,
    database_error,
    open_storage,
    storage_failure,
    wait_for_storage,
)
from maskpolicy.meta.search.study import prepare

POSTGRES_PASSWORD = "throwaway-test-password"  # the password conftest's server was initialised with
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# the smallest trial that still pre-trains and fine-tunes; no scoring or probe (nothing here prunes)
TINY = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=6", "pretrain.batch_size=8",
        "pretrain.checkpoint_every=6", "finetune.epochs=1", "finetune.batch_size=8", "score.enabled=false",
        "trainer.enable_progress_bar=false", "search.n_workers=1", "search.role=worker", "search.final.seeds=[1]",
        "search.heartbeat_interval=1", "search.grace_period=3", "pretrain.probe.every=0", "search/pruner=none",
        "search.pruning.pretraining=false"]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    yield
    for worker in STARTED:  # a test that failed half-way leaves none running
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    STARTED.clear()


def start_worker(url: str, run_dir: Path, index: int, *overrides: str) -> subprocess.Popen:
    """``maskpolicy-search search.role=worker`` in its own run directory; its stderr goes to ``run_dir/err``."""
    command = [sys.executable, "-m", "maskpolicy.meta.commands.search", *TINY, f"search.storage={url}",
               f"search.worker_index={index}", f"hydra.run.dir={run_dir}", *overrides]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "err", "w") as err:
        STARTED.append(subprocess.Popen(command, cwd=run_dir.parent, stdout=subprocess.DEVNULL, stderr=err,
                                        stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    return STARTED[-1]


def finish(workers: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    return [worker.wait(timeout=max(1.0, deadline - time.monotonic())) for worker in workers]


def study_at(url: str) -> optuna.Study:
    return optuna.load_study(study_name="maskpolicy", storage=open_storage(url, heartbeat_interval=None))


def ran_by(run_dir: Path) -> set[int]:
    """The trial numbers whose run directories this worker wrote."""
    return {int(path.name) for path in (run_dir / "trials").glob("*")} if (run_dir / "trials").exists() else set()


def wait_for(condition, timeout: float = 120, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


@pytest.mark.slow
def test_three_workers_record_every_trial_exactly_once(database_url, tmp_path):
    runs = [tmp_path / f"machine-{i}" for i in range(3)]
    workers = [start_worker(database_url, run, i, "search.n_trials=6") for i, run in enumerate(runs)]
    assert finish(workers) == [0, 0, 0], [(run / "err").read_text()[-2000:] for run in runs]
    trials = study_at(database_url).get_trials()
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))) and len({t._trial_id for t in trials}) == len(trials)
    assert sum(t.state in FINISHED for t in trials) == 6  # exactly: a worker starts no trial the budget lacks
    by_worker = [ran_by(run) for run in runs]
    assert set().union(*by_worker) == set(numbers) and sum(map(len, by_worker)) == len(numbers)  # each ran once
    assert sum(bool(ran) for ran in by_worker) >= 2  # the study really was shared
    assert all(set(t.user_attrs["metrics"]) >= {"dev_em"} for t in trials if t.state == TrialState.COMPLETE)


@pytest.mark.slow
def test_a_sigkilled_worker_s_trial_is_failed_by_its_heartbeat_and_retried(database_url, tmp_path):
    slow, others = tmp_path / "slow", [tmp_path / "a", tmp_path / "b"]
    victim = start_worker(database_url, slow, 0, "search.n_trials=5", "pretrain.steps=2000")
    wait_for(lambda: any((slow / "trials").glob("*/pretrain/metrics.csv")))  # pre-training, mid-trial
    workers = [start_worker(database_url, run, i + 1, "search.n_trials=5") for i, run in enumerate(others)]
    killed_number = next(iter(ran_by(slow)))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = study_at(database_url).trials[killed_number]
    assert killed.state == TrialState.RUNNING  # nobody has noticed yet
    assert finish(workers) == [0, 0], [(run / "err").read_text()[-2000:] for run in others]
    trials = study_at(database_url).get_trials()
    assert trials[killed_number].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state in FINISHED
    assert retried[0].number in ran_by(others[0]) | ran_by(others[1])
    assert sum(t.state in FINISHED for t in trials) == 5


@pytest.mark.slow
def test_a_server_restart_mid_study_loses_no_completed_trial(database, database_url, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    workers = [start_worker(database_url, run, i, "search.n_trials=4", "pretrain.steps=30")
               for i, run in enumerate(runs)]

    def completed() -> dict[int, float]:
        try:
            return {t.number: t.value for t in study_at(database_url).get_trials(states=(TrialState.COMPLETE,))}
        except (KeyError, SearchConfigError):  # the study is not created yet
            return {}

    wait_for(lambda: len(completed()) >= 1, timeout=180)
    before = completed()
    assert all(worker.poll() is None for worker in workers)  # mid-study: both still at work
    database.restart()
    codes = finish(workers)
    errors = [(run / "err").read_text() for run in runs]
    for code, error in zip(codes, errors, strict=True):  # each worker reconnected, or stopped saying what to do
        assert code == 0 or "lost the study database" in error and "re-run the same command to resume" in error, error
    after = completed()
    assert {number: after.get(number) for number in before} == before
    if sum(t.state in FINISHED for t in study_at(database_url).get_trials()) < 4:  # a stopped worker resumes
        assert finish([start_worker(database_url, tmp_path / "c", 2, "search.n_trials=4")]) == [0]
    assert sum(t.state in FINISHED for t in study_at(database_url).get_trials()) == 4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_connections_survive_a_restart_and_a_missed_heartbeat_is_logged_not_fatal(database, database_url, caplog):
    storage = open_storage(database_url, heartbeat_interval=1, grace_period=3)
    assert isinstance(storage, ReconnectingRDBStorage) and "+" in storage.engine.url.drivername
    study = optuna.create_study(study_name="beats", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    database.stop()
    back = threading.Timer(3.0, database.start)  # the server returns 3 s later
    back.start()
    try:
        with caplog.at_level(logging.WARNING, logger="maskpolicy.meta.search.engines"):
            storage.record_heartbeat(trial._trial_id)  # the server is down: logged, not raised
        assert f"heartbeat of trial {trial._trial_id} not recorded" in caplog.text
        assert not wait_for_storage(study, timeout=0.5, every=0.1)  # a worker waits for it, then gives up …
        assert wait_for_storage(study, timeout=60, every=0.2)  # … unless it comes back in time
    finally:
        back.join()
    storage.record_heartbeat(trial._trial_id)  # the pool's dead connections are replaced
    study.tell(trial, 1.0)
    assert optuna.load_study(study_name="beats", storage=storage).trials[0].state == TrialState.COMPLETE


def test_a_wrong_password_or_an_unreachable_server_is_a_clear_error(postgres, monkeypatch):
    with pytest.raises(SearchConfigError, match=r"(?s)cannot connect to postgresql://maskpolicy:\*\*\*@127.0.0.1.*"
                                                r"password authentication failed.*check the host, port"):
        open_storage(postgres.url(password="wrong"))
    with pytest.raises(SearchConfigError, match=r"(?s)cannot connect to .*refused.*server is running"):
        open_storage(postgres.url(port=closed_port()))  # nothing listens there
    monkeypatch.setenv("PGPASSWORD", POSTGRES_PASSWORD)  # how to keep the password out of the URL (and the logs)
    assert open_storage(postgres.url().replace(f":{POSTGRES_PASSWORD}@", "@"), heartbeat_interval=None)


def test_mariadb_a_wrong_password_or_an_unreachable_server_is_a_clear_error(mariadb):
    with pytest.raises(SearchConfigError, match=r"(?s)cannot connect to mysql\+pymysql://maskpolicy:\*\*\*@127.0.0.1.*"
                                                r"Access denied for user 'maskpolicy'.*check the host, port"):
        open_storage(mariadb.url(password="wrong"))
    with pytest.raises(SearchConfigError, match=r"(?s)cannot connect to .*Can't connect.*server is running"):
        open_storage(mariadb.url(port=closed_port()))
    plain = mariadb.url().replace("mysql+pymysql://", "mysql://")  # the installed driver is found (PyMySQL here)
    assert open_storage(plain, heartbeat_interval=None).engine.url.drivername == "mysql+pymysql"


def test_workers_opening_a_fresh_database_at_once_all_get_the_storage(database_url):
    # the first workers of a study race to create Optuna's tables; a loser retries instead of failing
    with ThreadPoolExecutor(4) as pool:
        storages = list(pool.map(lambda _: open_storage(database_url, heartbeat_interval=None), range(4)))
    studies = [optuna.create_study(study_name="race", storage=storage, load_if_exists=True) for storage in storages]
    assert len({study._study_id for study in studies}) == 1


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_grpc_storage_proxy_serves_the_study(database_url, monkeypatch):
    port = closed_port()
    proxied = open_storage(database_url, heartbeat_interval=None)
    threading.Thread(target=optuna.storages.run_grpc_proxy_server, args=(proxied,),
                     kwargs={"host": "127.0.0.1", "port": port}, daemon=True).start()
    study = optuna.create_study(study_name="proxied", storage=open_storage(f"grpc://127.0.0.1:{port}"))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    direct = optuna.load_study(study_name="proxied", storage=open_storage(database_url, heartbeat_interval=None))
    assert [t.params for t in direct.trials] == [t.params for t in study.trials] and len(direct.trials) == 3
    monkeypatch.setattr(engines, "CONNECT_TIMEOUT", 1)
    with pytest.raises(SearchConfigError, match=r"no gRPC storage proxy answered at grpc://127.0.0.1:\d+ within 1 s"):
        open_storage(f"grpc://127.0.0.1:{closed_port()}")
    with pytest.raises(SearchConfigError, match="write grpc://HOST:PORT"):
        open_storage("grpc://proxyhost")


def test_a_lost_database_is_found_behind_the_errors_optuna_raises_while_handling_it():
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused\n\tagain"))
    try:
        try:
            raise optuna.exceptions.StorageInternalError("an exception is raised during the commit") from refused
        except optuna.exceptions.StorageInternalError:
            raise UnboundLocalError("cannot access local variable 'updated_state'")  # noqa: B904 (Optuna 5.0's)
    except UnboundLocalError as error:
        found = storage_failure(error)
    assert isinstance(found, optuna.exceptions.StorageInternalError)
    assert database_error(found) == "ConnectionRefusedError: connection refused again"
    assert storage_failure(ValueError("a trial's own error")) is None


@pytest.mark.parametrize(("url", "fix"), [
    ("postgresql+pg8000://u:p@127.0.0.1/db", "driver is missing (pg8000); pip install pg8000"),
    ("mysql+mysqldb://u:p@127.0.0.1/db", "driver is missing (mysqldb); pip install mysqlclient"),
])
def test_a_missing_database_driver_names_the_package_to_install(url, fix):
    with pytest.raises(SearchConfigError, match=r"\*\*\*@127.0.0.1/db: its database " + fix.replace("(", r"\(")
                       .replace(")", r"\)")):
        open_storage(url)


def test_the_search_refuses_a_wrong_password_before_any_training(postgres, tmp_path):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("search", overrides=[*TINY, f"search.storage={postgres.url(password='wrong')}"])
    with pytest.raises(SearchConfigError, match="password authentication failed"):
        prepare(cfg, tmp_path)  # what maskpolicy-search does first
    assert not list(tmp_path.iterdir())
