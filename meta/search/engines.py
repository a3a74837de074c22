"""Optuna's engines by name: samplers, pruners and shared storages, with clear errors.

Everything here fails before any training: an unknown name lists the valid ones, a
missing optional dependency says what to ``pip install``, and a storage that cannot
be opened says why and how to fix it.

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

import importlib.util
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

from .space import SearchSpace, grid

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".journal")
JOURNAL_PREFIX = "journal:"
DRIVERS = {"postgresql": "psycopg2-binary (or psycopg[binary] with postgresql+psycopg://)",
           "mysql": "PyMySQL, with a mysql+pymysql:// URL"}


class SearchConfigError(ValueError):
    """A sampler, pruner or storage cannot be built from the given settings."""


def _needs(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SearchConfigError(f"{what} needs the {module!r} package: pip install {module}")


def _construct(kind: str, name: str, factory: Callable[..., Any], **options: Any) -> Any:
    """Calls an Optuna constructor; a bad option becomes one clear message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # chosen on purpose (e.g. TPE's group)
        try:
            return factory(**options)
        except (TypeError, ValueError) as error:
            raise SearchConfigError(
                f"{kind} {name!r} cannot be built with {options}: {error}; see optuna.{kind}s.{factory.__name__}"
            ) from error


# ---------------------------------------------------------------------------- samplers


def _tpe(seed: int | None, space: SearchSpace | None, **options: Any) -> optuna.samplers.BaseSampler:
    # multivariate + group: TPE models each family's parameters jointly, only over trials that drew that family
    settings = {"multivariate": True, "group": True, "seed": seed, **options}
    return _construct("sampler", "tpe", optuna.samplers.TPESampler, **settings)


def _grid(seed: int | None, space: SearchSpace | None, **options: Any) -> optuna.samplers.BaseSampler:
    if space is None and "search_space" not in options:
        raise SearchConfigError("the grid sampler needs the search space: build_sampler('grid', seed, space)")
    search_space = options.pop("search_space", None) or grid(space)
    return _construct("sampler", "grid", optuna.samplers.GridSampler, search_space=search_space, seed=seed, **options)


def _gp(seed: int | None, space: SearchSpace | None, **options: Any) -> optuna.samplers.BaseSampler:
    _needs("scipy", "the Gaussian-process sampler (gp)")
    return _construct("sampler", "gp", optuna.samplers.GPSampler, seed=seed, **options)


def _cmaes(seed: int | None, space: SearchSpace | None, **options: Any) -> optuna.samplers.BaseSampler:
    _needs("cmaes", "the CMA-ES sampler (cmaes)")
    return _construct("sampler", "cmaes", optuna.samplers.CmaEsSampler, seed=seed, **options)


def _simple(name: str, factory: Callable[..., Any]) -> Callable[..., optuna.samplers.BaseSampler]:
    def build(seed: int | None, space: SearchSpace | None, **options: Any) -> optuna.samplers.BaseSampler:
        return _construct("sampler", name, factory, seed=seed, **options)

    return build


SAMPLERS: Mapping[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": _simple("random", optuna.samplers.RandomSampler),
    "grid": _grid,
    "brute_force": _simple("brute_force", optuna.samplers.BruteForceSampler),
    "gp": _gp,
    "cmaes": _cmaes,
    "nsga2": _simple("nsga2", optuna.samplers.NSGAIISampler),
}


def build_sampler(
    name: str = "tpe", seed: int | None = None, space: SearchSpace | None = None, **options: Any
) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by name; ``options`` go to its constructor.

    ``tpe`` (default; multivariate with group decomposition, for conditional spaces),
    ``random``, ``grid`` (needs ``space``: see :func:`.space.grid`), ``brute_force``
    (exhaustive over conditional spaces; every searched float needs a step), ``gp``
    (needs scipy), ``cmaes`` (needs cmaes; models numeric parameters every trial shares
    and samples the rest at random), ``nsga2`` (multi-objective).
    """
    if name not in SAMPLERS:
        raise SearchConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed, space, **options)


# ---------------------------------------------------------------------------- pruners


def _wilcoxon(**options: Any) -> optuna.pruners.BasePruner:
    _needs("scipy", "the Wilcoxon pruner (wilcoxon)")
    return _construct("pruner", "wilcoxon", optuna.pruners.WilcoxonPruner, **options)


def _percentile(**options: Any) -> optuna.pruners.BasePruner:
    options.setdefault("percentile", 25.0)  # keep the top quarter
    return _construct("pruner", "percentile", optuna.pruners.PercentilePruner, **options)


def _pruner(name: str, factory: Callable[..., Any]) -> Callable[..., optuna.pruners.BasePruner]:
    return lambda **options: _construct("pruner", name, factory, **options)


PRUNERS: Mapping[str, Callable[..., optuna.pruners.BasePruner]] = {
    "none": _pruner("none", optuna.pruners.NopPruner),
    "median": _pruner("median", optuna.pruners.MedianPruner),
    "percentile": _percentile,
    "successive_halving": _pruner("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
    "hyperband": _pruner("hyperband", optuna.pruners.HyperbandPruner),
    "threshold": _pruner("threshold", optuna.pruners.ThresholdPruner),
    "wilcoxon": _wilcoxon,
}


def build_pruner(name: str = "none", **options: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name; ``options`` go to its constructor.

    ``none``, ``median``, ``percentile`` (default percentile 25: keep the top quarter),
    ``successive_halving``, ``hyperband``, ``threshold`` (needs ``lower`` or ``upper``),
    ``wilcoxon`` (needs scipy; for values reported per evaluation instance, e.g. per
    question or fold, not for learning curves).
    """
    if name not in PRUNERS:
        raise SearchConfigError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    return PRUNERS[name](**options)


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
