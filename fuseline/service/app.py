"""The web application of ``fuseline server``: the APIs, health, metrics and the dashboard.

FastAPI on uvicorn: FastAPI gives the OpenAPI page (``/docs``) and request
validation from the same declarations, uvicorn (with uvloop and httptools)
is among the fastest Python servers, and both are widely used and actively
kept. Routes that call the broker are plain functions, which FastAPI runs on
its thread pool; the broker's fixed connection budget bounds what they take
from the database, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import Depends, FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from ..errors import DatabaseError
from . import api_control, api_worker, errors
from .auth import anyone
from .context import ServiceContext, context_of

#: Threads that run broker calls. More would only queue for the broker's connections.
THREADS = 64


def create_app(context: ServiceContext, *, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The application over ``context``'s broker; ``on_shutdown`` runs when the server stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        context.hub.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            context.hub.stop()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(
        title="fuseline",
        version=__version__,
        summary="Durable workflow orchestration: the worker API and the control API.",
        lifespan=lifespan,
    )
    app.state.fuseline = context
    errors.install(app)
    app.include_router(api_worker.router)
    app.include_router(api_control.router)
    app.add_api_route("/healthz", health, methods=["GET"], tags=["service"], summary="For load balancers")
    app.add_api_route(
        "/metrics", metrics, methods=["GET"], tags=["service"], summary="Prometheus metrics",
        dependencies=[Depends(anyone)],
    )  # fmt: skip
    _mount_dashboard(app)
    app.add_middleware(BodyLimit, limit=context.max_body_bytes)  # type: ignore[arg-type]
    return app


def _mount_dashboard(app: FastAPI) -> None:
    """The web dashboard at ``/``, if this installation has it."""
    try:
        from .dashboard import mount
    except ImportError:  # pragma: no cover - the dashboard ships with the package
        return
    mount(app)


def health(request: Request) -> JSONResponse:
    """200 when the database answers, 503 when it does not (take the process out of rotation)."""
    broker = context_of(request).broker
    try:
        with broker.db.transaction() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (DatabaseError, Exception) as exc:
        return JSONResponse({"status": "unavailable", "reason": str(exc).splitlines()[0]}, 503)
    return JSONResponse({"status": "ok", "version": __version__})


def metrics(request: Request) -> Response:
    """Queue depth, oldest age and live workers per workflow and queue (cached, one query)."""
    registry = _registry(context_of(request))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _registry(context: ServiceContext) -> CollectorRegistry:
    registry: CollectorRegistry | None = getattr(context, "_registry", None)
    if registry is None:
        from ..metrics.queues import QueueCollector

        registry = CollectorRegistry()
        registry.register(QueueCollector(context.broker.engine, dead_after=2 * context.broker.lease_seconds))
        context._registry = registry  # type: ignore[attr-defined]
    return registry


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with a 413, before reading past the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen, over, started = 0, False, False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                over = True
                raise _TooLarge
            return message

        async def answer(message: Message) -> None:
            # FastAPI turns any error met reading a body into its own 400: past the limit,
            # that answer is dropped and the 413 below sent instead.
            nonlocal started
            if not over:
                started = True
                await send(message)

        with suppress(_TooLarge):
            await self.app(scope, limited, answer)
        if over and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body: dict[str, Any] = errors.error_body(
            "BodyTooLarge", f"the request body is larger than the server's limit of {self.limit} bytes"
        )
        await JSONResponse(body, 413)(scope, receive, send)


class _TooLarge(Exception):
    pass
