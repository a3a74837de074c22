"""Fixtures of the meta tests: typed run records made by hand, and throwaway PostgreSQL and MariaDB servers."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from maskpolicy.meta.results.schema import (
    Downstream,
    MLLScore,
    ModelRecord,
    Named,
    PolicyRecord,
    PretrainResults,
    PretrainStats,
    RateCurveRecord,
)


@pytest.fixture
def make_run() -> Callable[..., PretrainResults]:
    """``make_run(dev, test, mll, seconds=10.0, seed=1)``: a pre-training run's results with those scores."""

    def build(dev: float, test: float | None, mll: float | None, seconds: float = 10.0, seed: int = 1,
              dev_f1: float | None = None) -> PretrainResults:
        score = None if mll is None else MLLScore("stratified", mll * 50, 0.1, mll, mll / 0.693, "mean", 64, 4, 200,
                                                  RateCurveRecord([0.5, 1.0], [mll, mll]))
        return PretrainResults(PolicyRecord("entity", {}), Named("bioworld", {}), ModelRecord("tiny_bert", {}, 10),
                               seed, Downstream(dev, dev if dev_f1 is None else dev_f1, 3, test, test),
                               PretrainStats(10, 1000, 150, 2.0), score, seconds)

    return build


# ---------------------------------------------------------------------------- a throwaway PostgreSQL server

POSTGRES_USER, POSTGRES_PASSWORD = "maskpolicy", "throwaway-test-password"


def postgres_binaries() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on the PATH, or Debian's ``/usr/lib/postgresql/<version>/bin``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parent.parent.name)
    return debian[-1].parent if debian else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, on a local port, with password authentication."""

    binaries: Path
    root: Path
    port: int
    run_as: tuple[str, ...]  # e.g. ("runuser", "-u", "nobody", "--"): initdb refuses to run as root

    def url(self, database: str = "postgres", password: str = POSTGRES_PASSWORD, port: int | None = None) -> str:
        return f"postgresql://{POSTGRES_USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.run_as, str(self.binaries / tool), *args], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL, cwd=self.root)

    def _ctl(self, action: str, *args: str) -> subprocess.CompletedProcess:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        return self._run("pg_ctl", action, "-D", str(self.root / "data"), "-w", "-t", "60", "-l",
                         str(self.root / "server.log"), "-o", options, *args)

    def initdb(self) -> subprocess.CompletedProcess:
        (self.root / "password").write_text(POSTGRES_PASSWORD + "\n")
        return self._run("initdb", "-D", str(self.root / "data"), "-U", POSTGRES_USER, "--auth=scram-sha-256",
                         f"--pwfile={self.root / 'password'}", "--locale=C", "-E", "UTF8")

    def start(self) -> subprocess.CompletedProcess:
        return self._ctl("start")

    def restart(self) -> None:
        done = self._ctl("restart", "-m", "fast")
        assert done.returncode == 0, done.stderr + self.log()

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.root / "data"), "-m", "immediate")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(self.url())
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return self.url(name)


def _unprivileged_prefix() -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """How to run the server's tools: as this user, or as ``nobody`` when this is root (initdb refuses root)."""
    if os.geteuid() != 0:
        return (), None
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("PostgreSQL tests skipped: running as root and there is no user 'nobody' to run initdb as")
    if runuser is None:
        pytest.skip("PostgreSQL tests skipped: running as root and `runuser` (util-linux) is missing to run initdb "
                    "as an unprivileged user")
    return (runuser, "-u", "nobody", "--"), (nobody.pw_uid, nobody.pw_gid)


def start_or_skip(server, name: str) -> None:
    """Initialises and starts a throwaway database server; skips the tests, with the server's reason, if it cannot."""
    for step in (server.initdb, server.start):
        done = step()
        if done.returncode != 0:
            pytest.skip(f"{name} tests skipped: {step.__name__} failed: {(done.stderr or done.stdout)[-500:]} "
                        f"{server.log()[-500:]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (initdb + pg_ctl in a temporary directory), stopped afterwards.

    Skips, with the reason, where PostgreSQL or its Python driver is not installed or the server cannot start.
    """
    pytest.importorskip("psycopg2", reason="PostgreSQL tests skipped: pip install psycopg2-binary (the test extra)")
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL tests skipped: initdb not found on the PATH or in /usr/lib/postgresql/*/bin; "
                    "apt-get install postgresql (.ci/run does it on a CI machine)")
    run_as, owner = _unprivileged_prefix()
    root = Path(tempfile.mkdtemp(prefix="maskpolicy-postgres-"))
    if owner:
        os.chown(root, *owner)
    server = PostgresServer(binaries, root, free_port(), run_as)
    try:
        start_or_skip(server, "PostgreSQL")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres, request) -> str:
    """A fresh database on the session's server, named after the test; its URL (with the password)."""
    return postgres.create_database(re.sub(r"\W", "_", request.node.name)[:60].lower())


# ---------------------------------------------------------------------------- a throwaway MariaDB (MySQL) server

MARIADB_ROOT_BINARIES = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin")


def mariadb_binaries() -> tuple[Path, Path] | None:
    """``mariadb-install-db`` and the server (``mariadbd``, or ``mysqld``): on the PATH or where Debian puts them."""
    def find(*names: str) -> Path | None:
        for name in names:
            found = shutil.which(name) or shutil.which(name, path=":".join(MARIADB_ROOT_BINARIES))
            if found:
                return Path(found)
        return None

    install, server = find("mariadb-install-db", "mysql_install_db"), find("mariadbd", "mysqld")
    return (install, server) if install and server else None


@dataclass
class MariaDBServer:
    """A MariaDB server in a temporary directory, on a local port, with password authentication for the test user
    (``mariadb-install-db`` + ``mariadbd``, as root with ``--user=root``: a throwaway server, nothing else)."""

    install: Path
    server: Path
    root: Path
    port: int
    process: subprocess.Popen | None = None

    def url(self, database: str = "maskpolicy", password: str = POSTGRES_PASSWORD, port: int | None = None) -> str:
        return f"mysql+pymysql://{POSTGRES_USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def _user(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def initdb(self) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.install), "--no-defaults", f"--datadir={self.root / 'data'}",
                               "--auth-root-authentication-method=normal", "--skip-test-db", *self._user()],
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, cwd=self.root)

    def start(self) -> subprocess.CompletedProcess:
        command = [str(self.server), "--no-defaults", f"--datadir={self.root / 'data'}", f"--port={self.port}",
                   "--bind-address=127.0.0.1", f"--socket={self.root / 'socket'}", f"--pid-file={self.root / 'pid'}",
                   f"--log-error={self.root / 'server.log'}", "--skip-name-resolve", "--skip-log-bin",
                   "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0", "--max-connections=200",
                   *self._user()]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, cwd=self.root)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return subprocess.CompletedProcess(command, 1, "", f"mariadbd exited: {self.log()}")
            try:
                self._root_connection().close()
                return subprocess.CompletedProcess(command, 0, "", "")
            except Exception:  # not accepting connections yet
                time.sleep(0.2)
        return subprocess.CompletedProcess(command, 1, "", f"mariadbd did not answer within 60 s: {self.log()}")

    def _root_connection(self):
        import pymysql

        return pymysql.connect(unix_socket=str(self.root / "socket"), user="root", autocommit=True,
                               connect_timeout=2)

    def add_user(self) -> None:
        connection = self._root_connection()
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE USER '{POSTGRES_USER}'@'127.0.0.1' IDENTIFIED BY '{POSTGRES_PASSWORD}'")
            cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{POSTGRES_USER}'@'127.0.0.1'")
            cursor.execute("CREATE DATABASE IF NOT EXISTS maskpolicy")  # the default database of url()
        connection.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        done = self.start()
        assert done.returncode == 0, done.stderr

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def create_database(self, name: str) -> str:
        connection = self._root_connection()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}`")
        connection.close()
        return self.url(name)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """A real MariaDB server for the session, stopped afterwards; skips, with the reason, where MariaDB or PyMySQL
    is not installed or the server cannot start."""
    pytest.importorskip("pymysql", reason="MariaDB tests skipped: pip install PyMySQL (the test extra)")
    binaries = mariadb_binaries()
    if binaries is None:
        pytest.skip("MariaDB tests skipped: mariadb-install-db or mariadbd not found; apt-get install mariadb-server "
                    "(.ci/run does it on a CI machine)")
    root = Path(tempfile.mkdtemp(prefix="maskpolicy-mariadb-"))
    server = MariaDBServer(*binaries, root, free_port())
    try:
        start_or_skip(server, "MariaDB")
        server.add_user()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["postgres", "mariadb"])
def database(request):
    """Each real database server in turn (PostgreSQL, MariaDB); a server that cannot start skips its cases."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def database_url(database, request) -> str:
    """A fresh database on the server, named after the test; its URL (with the password)."""
    return database.create_database(re.sub(r"\W", "_", request.node.name)[:60].lower())


# ---------------------------------------------------------------------------- experiment trackers, kept local

@pytest.fixture
def tracker_home(monkeypatch, tmp_path) -> Iterator[Path]:
    """W&B and MLflow settings, caches and credentials looked for under ``tmp_path/home`` only, W&B offline and quiet.

    W&B runs still active when the test ends (Lightning's logger never finishes its run) are finished.
    """
    home = tmp_path / "home"
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(home / variable.lower()))
    for variable in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded, so that the logger's opt-in is undone afterwards
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(home))
    yield home
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.run.finish()
