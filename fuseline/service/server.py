"""Running ``fuseline server``: uvicorn processes, each with its own broker and token store.

The settings travel to the processes in environment variables, because
uvicorn starts ``--workers N`` processes by importing an application
factory (:func:`app_from_environment`) rather than by pickling objects.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from fastapi import FastAPI

from ..broker.base import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_RESULT_BYTES
from .context import DEFAULT_MAX_BODY_BYTES, ServiceContext

DATABASE_ENV = "FUSELINE_DATABASE_URL"
_CONNECTIONS_ENV = "FUSELINE_SERVER_CONNECTIONS"
_LEASE_ENV = "FUSELINE_SERVER_LEASE_SECONDS"
_MAX_BODY_ENV = "FUSELINE_SERVER_MAX_BODY_BYTES"
_LISTEN_ENV = "FUSELINE_SERVER_LISTEN"
_MAX_RESULT_ENV = "FUSELINE_SERVER_MAX_RESULT_BYTES"

#: Database connections each server process uses for requests (plus one to LISTEN on).
DEFAULT_CONNECTIONS = 8

logger = logging.getLogger("fuseline.server")


@dataclass(frozen=True)
class ServerSettings:
    database_url: str
    connections: int = DEFAULT_CONNECTIONS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    listen: bool = True
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    def export(self) -> None:
        """Hand the settings to the server processes uvicorn is about to start."""
        os.environ[DATABASE_ENV] = self.database_url
        os.environ[_CONNECTIONS_ENV] = str(self.connections)
        os.environ[_LEASE_ENV] = repr(self.lease_seconds)
        os.environ[_MAX_BODY_ENV] = str(self.max_body_bytes)
        os.environ[_LISTEN_ENV] = "1" if self.listen else "0"
        os.environ[_MAX_RESULT_ENV] = str(self.max_result_bytes)

    @classmethod
    def from_environment(cls) -> ServerSettings:
        return cls(
            database_url=os.environ.get(DATABASE_ENV, "sqlite:///fuseline.db"),
            connections=int(os.environ.get(_CONNECTIONS_ENV, DEFAULT_CONNECTIONS)),
            lease_seconds=float(os.environ.get(_LEASE_ENV, DEFAULT_LEASE_SECONDS)),
            max_body_bytes=int(os.environ.get(_MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES)),
            listen=os.environ.get(_LISTEN_ENV, "1") == "1",
            max_result_bytes=int(os.environ.get(_MAX_RESULT_ENV, DEFAULT_MAX_RESULT_BYTES)),
        )


def build_app(settings: ServerSettings) -> FastAPI:
    """The application over a new broker on ``settings.database_url``, closed with the server."""
    from ..broker.sql import SqlBroker
    from .app import create_app
    from .tokens import TokenStore

    broker = SqlBroker.for_url(
        settings.database_url,
        lease_seconds=settings.lease_seconds,
        connections=settings.connections,
        listen=settings.listen,
        max_result_bytes=settings.max_result_bytes,
    )
    context = ServiceContext(broker, TokenStore(broker), max_body_bytes=settings.max_body_bytes)
    return create_app(context, on_shutdown=broker.close)


def app_from_environment() -> FastAPI:
    """uvicorn's application factory (``--factory``) for each server process."""
    return build_app(ServerSettings.from_environment())


def serve(settings: ServerSettings, *, host: str, port: int, workers: int, log_level: str) -> None:
    """Run until SIGINT/SIGTERM; each of ``workers`` processes serves the same port."""
    import uvicorn

    settings.export()
    uvicorn.run(
        "fuseline.service.server:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        log_level=log_level,
        access_log=log_level == "debug",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
