"""``fuseline server``: the HTTP service for workers without database credentials, the
control API and the dashboard."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import err_console, fail, masked_url, settings, user_errors

LOG_LEVELS = ("debug", "info", "warning", "error")


def server(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="Server processes sharing the port.")
    ] = 1,
    connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Database connections per server process for requests (each also keeps one to "
            "LISTEN on). However many workers connect, the database sees at most "
            "workers x (connections + 1).",
        ),
    ] = 8,
    lease_seconds: Annotated[
        float, typer.Option(min=0.1, help="How long a step claimed through the server stays reserved.")
    ] = 30.0,
    max_body_mb: Annotated[
        int, typer.Option("--max-body-mb", min=1, help="Largest request body, in MiB (413 beyond).")
    ] = 32,
    listen: Annotated[
        bool,
        typer.Option("--listen/--no-listen", help="Wake waiting workers on PostgreSQL notifications."),
    ] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the worker API, the control API (OpenAPI at /docs), /metrics, /healthz and the
    dashboard at / over the configured database.

    Every request needs a token (see `fuseline tokens create`): workers use a
    worker token, people and scripts a viewer or operator token.

    Example: fuseline --database-url postgresql+psycopg://app@db/app server --host 0.0.0.0 --workers 2

    Example: fuseline worker run my_app.flows:etl --server http://orchestrator:8000 --token "$TOKEN"
    """
    from ..broker.sql import SqlBroker
    from ..service.server import ServerSettings, serve
    from ..service.tokens import TokenStore

    level = log_level.lower()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(
            f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}", param_hint="--log-level"
        )
    url = settings(ctx).url
    with user_errors():  # a wrong URL or a database not migrated: one line, before listening
        broker = SqlBroker.for_url(url)
        try:
            live = [t for t in TokenStore(broker).list() if t.revoked_at is None]
        finally:
            broker.close()
    if not live:
        err_console.print(
            "warning: no token exists yet, so every request will be refused (401); create one with "
            "`fuseline tokens create NAME --role operator`",
            markup=False,
        )
    err_console.print(f"fuseline server on http://{host}:{port} over {masked_url(ctx)}", markup=False)
    settings_ = ServerSettings(
        url,
        connections=connections,
        lease_seconds=lease_seconds,
        max_body_bytes=max_body_mb * 1024 * 1024,
        listen=listen,
    )
    try:
        serve(settings_, host=host, port=port, workers=workers, log_level=level)
    except OSError as exc:
        fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}")
