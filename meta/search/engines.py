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
- ``None`` or ``":memory:"`` → in memory (one process).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from omegaconf import DictConfig
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

from maskpolicy.meta.config import ConfigError, build
from maskpolicy.meta.search.space import SearchSpace, grid

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".journal")
JOURNAL_PREFIX = "journal:"
DRIVERS = {"postgresql": "psycopg2-binary (or psycopg[binary] with postgresql+psycopg://)",
           "mysql": "PyMySQL, with a mysql+pymysql:// URL"}


class SearchConfigError(ConfigError):
    """A search setting (storage, seeds, objectives, …) cannot be used."""


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


def grid_sampler(space: Mapping[str, Any], seed: int | None = None) -> optuna.samplers.GridSampler:
    """Optuna's GridSampler over the values :func:`.space.grid` lists for ``space`` (a search-space config)."""
    return optuna.samplers.GridSampler(grid(SearchSpace.from_config(space, check=False)), seed=seed)


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


def open_rdb(
    url: str, heartbeat_interval: int | None = 60, grace_period: int | None = 180, max_retry: int | None = 3
) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat; a stale trial is failed and its parameters retried ``max_retry`` times."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise SearchConfigError(f"{url!r} is not a database URL (e.g. sqlite:///study.db): {error}") from error
    shown = parsed.render_as_string(hide_password=True)
    engine_kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        _sqlite_url(parsed)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait for its lock
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna still calls the heartbeat experimental
            heartbeat = {}
            if heartbeat_interval is not None:
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                             "heartbeat_stale_trial_callback": retry}
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except ImportError as error:
        hint = DRIVERS.get(parsed.get_backend_name(), f"the SQLAlchemy driver for {parsed.drivername}")
        raise SearchConfigError(f"cannot open {shown}: its database driver is missing; pip install {hint}") from error
    except sqlalchemy.exc.NoSuchModuleError as error:
        raise SearchConfigError(f"cannot open {shown}: SQLAlchemy knows no database {parsed.drivername!r}") from error
    except sqlalchemy.exc.OperationalError as error:
        raise SearchConfigError(
            f"cannot connect to {shown}: {error.orig}; check the host, port, database name and credentials, "
            "and that the server is running"
        ) from error
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as error:
        # RuntimeError: a schema written by another Optuna version
        raise SearchConfigError(
            f"cannot open {shown}: {error}. An old study database may need `optuna storage upgrade --storage URL`"
        ) from error


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
    if "://" in text:
        return open_rdb(text, heartbeat_interval, grace_period, max_retry)
    suffix = Path(text).suffix
    if suffix in SQLITE_SUFFIXES:
        return open_rdb(f"sqlite:///{Path(text).expanduser().resolve()}", heartbeat_interval, grace_period, max_retry)
    if suffix in JOURNAL_SUFFIXES:
        return open_journal(text)
    raise SearchConfigError(
        f"cannot tell what storage {text!r} is: use a database URL (sqlite:///study.db, "
        f"postgresql://user:password@host/db), a path ending in {'/'.join(SQLITE_SUFFIXES)} (SQLite), "
        f"journal:PATH or a path ending in {'/'.join(JOURNAL_SUFFIXES)} (a journal file)"
    )
