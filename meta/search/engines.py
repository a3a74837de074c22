"""Optuna's engines: samplers and pruners from their config groups, and shared storages, with clear errors.

Samplers (``conf/search/sampler/``) and pruners (``conf/search/pruner/``) are ``_target_``
configs: any Optuna sampler or pruner, or your own, is one YAML file away. Everything
here fails before any training; a storage that cannot be opened says why and how to fix it.

Storages (:func:`open_storage`):

- ``sqlite:///path.db``, ``postgresql://user:password@host/db``, ``mysql+pymysql://…``,
  or a plain path ending in ``.db`` / ``.sqlite`` / ``.sqlite3`` → an RDB storage with a
  heartbeat: a trial whose worker was killed is marked failed by the next worker's
  ``study.optimize`` and its parameters are queued again. Heartbeats are sent only
  inside ``study.optimize``; an ask-and-tell loop gets none.
- ``journal:PATH``, or a path ending in ``.log`` / ``.journal`` → a journal file (append
  only, safe for many processes on one file system, no database). Optuna has no
  heartbeat for journal storages: a killed worker's trial stays ``RUNNING``.
- ``grpc://HOST:PORT`` → a client of Optuna's gRPC storage proxy (``optuna.storages.run_grpc_proxy_server``
  in front of a database, for many workers): one process holds the database connections and a
  cache. The proxy has no heartbeat either.
- ``None`` or ``":memory:"`` → in memory (one process).

A server database (PostgreSQL, MySQL) is checked by connecting before any training (a
wrong password or an unreachable host fails at once, after ``connect_timeout`` seconds at
most), pooled connections are pinged before use so a restarted server is reconnected to,
and a heartbeat that fails while the server is away is logged and retried at the next
beat instead of ending the heartbeat thread (which would let another worker fail a live
trial as stale). A trial records its first heartbeat as it begins, so a worker killed before its heartbeat
thread started still leaves a trial that is failed once its grace period passes. ``postgresql://`` uses
whichever driver is installed, psycopg 3 or psycopg2; ``mysql://`` (MySQL, MariaDB) uses PyMySQL when it is
installed and mysqlclient is not.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from omegaconf import DictConfig
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from maskpolicy.meta.config import ConfigError, build

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".journal")
JOURNAL_PREFIX = "journal:"
GRPC_PREFIX = "grpc://"
# what to pip install for each SQLAlchemy driver name (the module of the same name otherwise)
DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pymysql": "PyMySQL",
           "mysqldb": "mysqlclient (or PyMySQL with a mysql+pymysql:// URL)"}
POSTGRES_DRIVERS = ("psycopg", "psycopg2")  # SQLAlchemy's default for postgresql:// first
MYSQL_DRIVERS = ("mysqldb", "pymysql")      # … and for mysql:// (mysqlclient)
_MODULES = {"mysqldb": "MySQLdb"}           # the module a driver name imports
# what a storage call raises when the database is unreachable: SQLAlchemy's error, or Optuna's wrapper of it
STORAGE_ERRORS = (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError)
SCHEMA_ATTEMPTS = 5
CONNECT_TIMEOUT = 10  # seconds a server database may take to answer before the search gives up
RUNNING = TrialState.RUNNING
log = logging.getLogger(__name__)


class SearchConfigError(ConfigError):
    """A search setting (storage, seeds, objectives, …) cannot be used."""


class StorageLost(RuntimeError):
    """The study's database went away during the search; what is recorded is kept."""


def build_sampler(node: DictConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    """The sampler a ``search/sampler`` config describes (``_target_`` and constructor options), seeded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # chosen on purpose (TPE's group, GP, …)
        return build(node, "sampler", seed=seed)


def build_pruner(node: DictConfig) -> optuna.pruners.BasePruner:
    """The pruner a ``search/pruner`` config describes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return build(node, "pruner")


# ---------------------------------------------------------------------------- storages


def _writable_directory(path: Path, what: str) -> None:
    directory = path.parent
    if not directory.is_dir():
        raise SearchConfigError(
            f"cannot open the {what} {path}: directory {directory} does not exist; create it "
            f"(mkdir -p {directory}) or choose another path"
        )
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SearchConfigError(f"cannot open the {what} {path}: no write permission; choose a writable path")


def open_journal(path: str | Path) -> JournalStorage:
    """A journal-file storage at ``path`` (created if missing)."""
    path = Path(path).expanduser()
    _writable_directory(path, "journal file")
    # symlink locks (Optuna's default) need a file system that allows symlinks; Windows often does not
    lock = JournalFileOpenLock(str(path)) if os.name == "nt" else None
    try:
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except OSError as error:
        raise SearchConfigError(f"cannot open the journal file {path}: {error}") from error


def _sqlite_url(url: sqlalchemy.engine.URL) -> None:
    """Checks an SQLite file's directory up front (SQLite's own error says only 'unable to open')."""
    if url.database and url.database != ":memory:":
        _writable_directory(Path(url.database).expanduser(), "SQLite database")
        _check_sqlite_file(Path(url.database).expanduser())


def _check_sqlite_file(path: Path) -> None:
    """A study file that exists must be a whole SQLite database (SQLite's quick check), else a damaged file (a
    truncated copy, a full disk, bits flipped) would fail deep inside Optuna, or look like an empty study."""
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new study
    problem = None
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            rows = connection.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                problem = "; ".join(str(row[0]) for row in rows[:3])
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        problem = str(error)
    if problem is not None:
        raise SearchConfigError(
            f"{path} is not a whole SQLite study database ({problem}): the file is damaged (truncated, overwritten "
            "or written to a full disk). Restore it from a copy, or move it away to start a new study"
        )


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeat survives a database restart.

    Optuna's heartbeat thread ends at the first failed beat; the trial would then look dead
    to other workers while it still runs. Here a failed beat is logged and the next one retried.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except STORAGE_ERRORS as error:
            log.warning("heartbeat of trial %d not recorded (%s); retrying at the next beat", trial_id,
                        database_error(error))

    # Optuna fails only trials that have a heartbeat: a worker killed between creating its trial and the first
    # beat of its heartbeat thread would leave the trial running for ever. Here a trial beats when it begins.

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)  # what create_new_trial and Optuna's cache call
        if self.heartbeat_interval is not None and trial.state == RUNNING:
            self.record_heartbeat(trial._trial_id)
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
                               ) -> bool:
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state == RUNNING and self.heartbeat_interval is not None:
            self.record_heartbeat(trial_id)  # a queued trial (a retry, an enqueued family) begins
        return changed


def open_study(storage: BaseStorage, study_name: str, **options: Any) -> optuna.Study:
    """``optuna.create_study(load_if_exists=True)`` with its trials read once, so that an SQLite study file whose
    records cannot be read (bits flipped inside a row) stops here with a :class:`SearchConfigError` naming the file,
    not later deep inside Optuna. A server database's errors pass through (a lost server is handled elsewhere)."""
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True, **options)
        study.get_trials(deepcopy=False)
        return study
    except (sqlalchemy.exc.DatabaseError, UnicodeDecodeError, json.JSONDecodeError) as error:
        engine = getattr(storage, "engine", None)
        if engine is None or engine.url.get_backend_name() != "sqlite":
            raise
        path = engine.url.database
        raise SearchConfigError(
            f"{path} is not a whole SQLite study database ({database_error(error)}): the file is damaged "
            "(truncated, overwritten or written to a full disk). Restore it from a copy, or move it away to start a "
            "new study"
        ) from error


def storage_failure(error: BaseException) -> BaseException | None:
    """The storage error behind ``error``, if any: itself, its cause, or what it was raised while handling
    (Optuna 5.0 can raise an ``UnboundLocalError`` while handling a failed storage read)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, STORAGE_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def wait_for_storage(study: optuna.Study, timeout: float, every: float = 1.0) -> bool:
    """Whether the study's storage answers again within ``timeout`` seconds (a restarted server)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            study.get_trials(deepcopy=False)
            return True
        except Exception as error:
            if storage_failure(error) is None:
                raise
            if time.monotonic() > deadline:
                return False
            time.sleep(every)


def database_error(error: BaseException) -> str:
    """The database's own words for a storage error (Optuna wraps SQLAlchemy's, which wraps the driver's)."""
    while error.__cause__ is not None and not isinstance(error, sqlalchemy.exc.DBAPIError):
        error = error.__cause__
    cause = error.orig if isinstance(error, sqlalchemy.exc.DBAPIError) else error
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


def _with_installed_driver(parsed: sqlalchemy.engine.URL) -> sqlalchemy.engine.URL:
    """``postgresql://`` / ``mysql://`` / ``mariadb://`` with a driver that is installed (SQLAlchemy would insist
    on psycopg 3, and on mysqlclient)."""
    drivers = {"postgresql": POSTGRES_DRIVERS, "mysql": MYSQL_DRIVERS, "mariadb": MYSQL_DRIVERS}.get(parsed.drivername)
    if drivers is None:
        return parsed
    installed = [name for name in drivers if importlib.util.find_spec(_MODULES.get(name, name)) is not None]
    return parsed.set(drivername=f"{parsed.drivername}+{installed[0]}") if installed else parsed


def _engine_options(parsed: sqlalchemy.engine.URL) -> dict[str, Any]:
    if parsed.get_backend_name() == "sqlite":
        _sqlite_url(parsed)
        return {"connect_args": {"timeout": 60}}  # several workers on one file wait for its lock
    connect = ({"connect_timeout": CONNECT_TIMEOUT} if parsed.get_backend_name() in ("postgresql", "mysql", "mariadb")
               else {})
    return {"pool_pre_ping": True, "connect_args": connect}  # a restarted server's dead connections are replaced


def _create_rdb(url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]) -> ReconnectingRDBStorage:
    """Optuna's storage on ``url``; several workers starting at once may race to create its tables."""
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return ReconnectingRDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError
                ) as error:
            if isinstance(error, sqlalchemy.exc.OperationalError) and not _table_exists(error):
                raise  # a server that is down or refuses the credentials: reported by the caller
            time.sleep(0.2 * attempt)  # another worker created a table or the version row first; now they exist
    return ReconnectingRDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)


def _table_exists(error: sqlalchemy.exc.OperationalError) -> bool:
    """MySQL and MariaDB report a table another worker just created as an operational error (1050), not as
    PostgreSQL's and SQLite's programming or integrity error."""
    code = getattr(error.orig, "args", (None,))[:1]
    return code == (1050,) or "already exists" in str(error.orig)


def open_rdb(
    url: str, heartbeat_interval: int | None = 60, grace_period: int | None = 180, max_retry: int | None = 3
) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat; a stale trial is failed and its parameters retried ``max_retry`` times."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise SearchConfigError(f"{url!r} is not a database URL (e.g. sqlite:///study.db): {error}") from error
    shown = parsed.render_as_string(hide_password=True)
    parsed = _with_installed_driver(parsed)
    try:
        engine_kwargs = _engine_options(parsed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna still calls the heartbeat experimental
            heartbeat = {}
            if heartbeat_interval is not None:
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                             "heartbeat_stale_trial_callback": retry}
            return _create_rdb(parsed.render_as_string(hide_password=False), engine_kwargs, heartbeat)
    except ImportError as error:
        driver = parsed.get_driver_name()
        hint = DRIVERS.get(driver, driver)
        if parsed.drivername == "postgresql":
            hint = "psycopg2-binary (or 'psycopg[binary]')"
        elif parsed.drivername in ("mysql", "mariadb"):
            hint = "PyMySQL (or mysqlclient)"
        raise SearchConfigError(f"cannot open {shown}: its database driver is missing ({driver}); "
                                f"pip install {hint}") from error
    except sqlalchemy.exc.NoSuchModuleError as error:
        raise SearchConfigError(f"cannot open {shown}: SQLAlchemy knows no database {parsed.drivername!r}") from error
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError) as error:
        # Optuna wraps a connection refused while it writes its version row (a server restarting) in its own error
        refused = error if isinstance(error, sqlalchemy.exc.OperationalError) else error.__cause__
        if not isinstance(refused, sqlalchemy.exc.OperationalError):
            raise
        raise SearchConfigError(
            f"cannot connect to {shown}: {' '.join(str(refused.orig).split())}; check the host, port, database name "
            "and credentials, and that the server is running"
        ) from error
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as error:
        # RuntimeError: a schema written by another Optuna version
        raise SearchConfigError(
            f"cannot open {shown}: {error}. An old study database may need `optuna storage upgrade --storage URL`"
        ) from error


def open_grpc(location: str) -> BaseStorage:
    """A client of the gRPC storage proxy at ``grpc://HOST:PORT``, checked to answer within ``CONNECT_TIMEOUT``."""
    host, _, port = location[len(GRPC_PREFIX):].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise SearchConfigError(f"{location!r} is not a gRPC proxy address; write grpc://HOST:PORT, e.g. "
                                "grpc://localhost:13000")
    try:
        from optuna.storages import GrpcStorageProxy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # chosen on purpose by the grpc:// URL
            proxy = GrpcStorageProxy(host=host, port=int(port))
    except ImportError as error:
        raise SearchConfigError(f"cannot open {location}: the gRPC client is missing; pip install grpcio protobuf"
                                ) from error
    try:
        proxy.wait_server_ready(timeout=CONNECT_TIMEOUT)
    except ConnectionError as error:
        raise SearchConfigError(f"no gRPC storage proxy answered at {location} within {CONNECT_TIMEOUT} s; start one "
                                "with optuna.storages.run_grpc_proxy_server, or check the host and port") from error
    return proxy


def shown_location(location: str) -> str:
    """A storage location fit for messages and logs: a database URL's password hidden."""
    if "://" not in location:
        return location
    try:
        return sqlalchemy.engine.make_url(location).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return location


def open_storage(
    location: str | Path | None,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = 180,
    max_retry: int | None = 3,
) -> BaseStorage:
    """Opens (creating if needed) the study storage at ``location``; see the module docstring for the forms.

    Args:
        location: a database URL, ``journal:PATH``, a path ending in a known suffix, or None.
        heartbeat_interval: seconds between a running trial's heartbeats (RDB only); None turns it off.
        grace_period: seconds without a heartbeat after which a trial counts as dead.
        max_retry: how many times a dead trial's parameters are run again (None: always).
    """
    text = "" if location is None else os.fspath(location)
    if text in ("", ":memory:"):
        return optuna.storages.InMemoryStorage()
    if text.startswith(JOURNAL_PREFIX):
        return open_journal(text[len(JOURNAL_PREFIX):])
    if text.startswith(GRPC_PREFIX):
        return open_grpc(text)
    if "://" in text:
        return open_rdb(text, heartbeat_interval, grace_period, max_retry)
    suffix = Path(text).suffix
    if suffix in SQLITE_SUFFIXES:
        return open_rdb(f"sqlite:///{Path(text).expanduser().resolve()}", heartbeat_interval, grace_period, max_retry)
    if suffix in JOURNAL_SUFFIXES:
        return open_journal(text)
    raise SearchConfigError(
        f"cannot tell what storage {text!r} is: use a database URL (sqlite:///study.db, "
        f"postgresql://user:password@host/db), grpc://HOST:PORT (a gRPC storage proxy), a path ending in "
        f"{'/'.join(SQLITE_SUFFIXES)} (SQLite), "
        f"journal:PATH or a path ending in {'/'.join(JOURNAL_SUFFIXES)} (a journal file)"
    )
