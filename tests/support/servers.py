"""Real ``fuseline server`` processes for the tests, started in tens of milliseconds.

The contract suite starts a server per test (each with its own lease length),
hundreds in a run. A fresh interpreter would spend about a second importing
FastAPI, SQLAlchemy and fuseline each time, so servers are forked from a
*fork server* that imported them once: each is still a separate OS process
that owns its socket, its broker and its database connections, and stops on
SIGTERM as ``fuseline server`` does (SIGKILL in the crash tests).
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

import httpx

from fuseline.broker.sql import SqlBroker
from fuseline.service.server import ServerSettings
from fuseline.service.tokens import Role, TokenStore

#: Modules the fork server imports once, so that no server process imports them again.
_PRELOAD = [
    "fuseline.service.server",
    "fuseline.service.app",
    "fuseline.service.tokens",
    "fuseline.broker.sql",
    "fuseline.broker.sql.migrate",
    "fuseline.metrics.queues",
    "psycopg",
    "alembic.script",
    "alembic.runtime.migration",
    "uvicorn",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
    "httpx",
]
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(_PRELOAD)

#: Longest a server may take to answer its health check after starting.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(settings: ServerSettings, port: int) -> None:
    """The server process: one uvicorn server on ``port`` until SIGTERM."""
    import uvicorn

    from fuseline.service.server import build_app

    config = uvicorn.Config(build_app(settings), host="127.0.0.1", port=port, log_level="warning")
    uvicorn.Server(config).run()


@dataclass
class ServerProcess:
    """A running server at ``url``; ``stop()`` (SIGTERM), ``kill()`` (SIGKILL), ``start()`` again."""

    settings: ServerSettings
    port: int = field(default_factory=free_port)
    process: BaseProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.process = _context.Process(target=_run, args=(self.settings, self.port), daemon=True)
        self.process.start()
        self.wait_until_healthy()
        return self

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.is_alive(), "the server process exited"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"the server at {self.url} did not become healthy in {START_TIMEOUT} s")

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(15)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def create_token(database_url: str, name: str, role: Role | str) -> str:
    """A token stored in the database at ``database_url`` (as ``fuseline tokens create`` does)."""
    broker = SqlBroker(database_url)
    try:
        return TokenStore(broker).create(name, role)
    finally:
        broker.close()


class ServerPool:
    """Servers for the contract suite's HTTP runs, one per test, over the session's database.

    Each test empties the tables, so each gets a new server (no broker cache survives a
    test). The next server with the default settings is started while the current test
    runs, which hides most of its start-up; the session's token is created once (scrypt
    is slow on purpose) and its row put back after each emptying.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._rows: list[tuple[str, list[dict[str, object]]]] | None = None
        self._token: str | None = None
        self._next: ServerProcess | None = None

    def restore_token(self) -> str:
        """The operator token, its rows written again into the freshly emptied tables."""
        import sqlalchemy as sa

        from fuseline.broker.sql.models import server_secrets, tokens

        engine = sa.create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                if self._rows is None:
                    self._token = create_token(self.database_url, "contract", Role.OPERATOR)
                    self._rows = [
                        (table.name, [dict(r._mapping) for r in conn.execute(sa.select(table))])
                        for table in (tokens, server_secrets)
                    ]
                else:
                    for table, rows in zip((tokens, server_secrets), self._rows, strict=True):
                        if rows[1]:
                            conn.execute(sa.insert(table), rows[1])
        finally:
            engine.dispose()
        assert self._token is not None
        return self._token

    def take(self, *, lease_seconds: float, max_result_bytes: int) -> ServerProcess:
        """A started server with these settings; the next default one starts meanwhile."""
        settings = ServerSettings(
            self.database_url, connections=4, lease_seconds=lease_seconds, max_result_bytes=max_result_bytes
        )
        if self._next is not None and self._next.settings == settings:
            server, self._next = self._next, None
            server.wait_until_healthy()
        else:
            server = ServerProcess(settings).start()
        if self._next is None:
            self._next = ServerProcess(ServerSettings(self.database_url, connections=4))
            self._next.process = _context.Process(target=_run, args=(self._next.settings, self._next.port))
            self._next.process.daemon = True
            self._next.process.start()
        return server

    def close(self) -> None:
        if self._next is not None:
            self._next.kill()
