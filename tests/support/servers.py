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
