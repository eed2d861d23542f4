"""The server processes of the contract suite's HTTP runs: long-lived, with a fresh broker per test.

Each contract test starts from empty tables and a new broker (no cache of an
earlier test may survive). Starting a server process per test cost some
0.6 s, some 300 times a run; instead each server process here lives for the
whole session and, when a test takes it, builds a new SqlBroker and token
store with the test's settings (lease length, result limit) and closes the
old ones, told over a pipe. Clients still talk to a real server process over
HTTP, with the application ``fuseline server`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from fuseline.service.server import ServerSettings
from fuseline.service.tokens import Role

from .servers import ServerProcess, _context, create_token


def _serve(settings: ServerSettings, port: int, control: Connection) -> None:
    """A server process whose broker is replaced whenever the test side asks (see module doc)."""
    import threading

    import uvicorn

    from fuseline.broker.sql import SqlBroker
    from fuseline.service.app import create_app
    from fuseline.service.context import ServiceContext
    from fuseline.service.tokens import TokenStore

    def new_broker(chosen: ServerSettings) -> SqlBroker:
        return SqlBroker(
            chosen.database_url,
            lease_seconds=chosen.lease_seconds,
            max_result_bytes=chosen.max_result_bytes,
            connections=chosen.connections,
        )

    broker = new_broker(settings)
    # Tokens are checked through a broker of their own, kept for the process's life: each test
    # puts the same token rows back, so the store's scrypt result stays valid from test to test.
    tokens = TokenStore(SqlBroker(settings.database_url, connections=1, listen=False))
    context = ServiceContext(broker, tokens)

    def renew() -> None:
        while True:
            try:
                chosen = control.recv()
            except EOFError:
                return
            fresh = new_broker(chosen)
            old = context.broker
            context.broker = fresh
            context.hub._wait_for_work = fresh.wait_for_work
            context.__dict__.pop("_registry", None)
            old.close()
            control.send("renewed")

    threading.Thread(target=renew, daemon=True).start()
    app = create_app(context, on_shutdown=lambda: context.broker.close())
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")).run()


@dataclass
class RenewableServer:
    server: ServerProcess
    control: Connection

    def renew(self, settings: ServerSettings) -> None:
        self.control.send(settings)
        if not self.control.poll(30):
            raise AssertionError("the contract server did not renew its broker within 30 s")
        assert self.control.recv() == "renewed"


@dataclass
class ContractServers:
    """Servers for one session; per test, the n-th broker a test makes goes to the n-th server."""

    database_url: str
    servers: list[RenewableServer] = field(default_factory=list)
    _used: int = 0
    _rows: list[list[dict[str, Any]]] | None = None
    _token: str | None = None

    def start_test(self) -> str:
        """A test begins (its tables were just emptied): put the session's token back, return it."""
        import sqlalchemy as sa

        from fuseline.broker.sql.models import server_secrets, tokens

        self._used = 0
        engine = sa.create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                if self._rows is None:
                    self._token = create_token(self.database_url, "contract", Role.OPERATOR)
                    self._rows = [
                        [dict(r._mapping) for r in conn.execute(sa.select(t))]
                        for t in (tokens, server_secrets)
                    ]
                else:
                    for table, rows in zip((tokens, server_secrets), self._rows, strict=True):
                        if rows:
                            conn.execute(sa.insert(table), rows)
        finally:
            engine.dispose()
        assert self._token is not None
        return self._token

    def take(self, *, lease_seconds: float, max_result_bytes: int) -> str:
        """The URL of a server whose broker was just renewed with these settings."""
        settings = ServerSettings(
            self.database_url, connections=4, lease_seconds=lease_seconds, max_result_bytes=max_result_bytes
        )
        if self._used == len(self.servers):
            ours, theirs = _context.Pipe()
            server = ServerProcess(settings)
            server.process = _context.Process(
                target=_serve, args=(settings, server.port, theirs), daemon=True
            )
            server.process.start()
            server.wait_until_healthy()
            self.servers.append(RenewableServer(server, ours))
        else:
            self.servers[self._used].renew(settings)
        self._used += 1
        return self.servers[self._used - 1].server.url

    def close(self) -> None:
        for renewable in self.servers:
            renewable.control.close()
            renewable.server.kill()
