"""HTML out of templates, and every failure of a dashboard route as a friendly page.

Templates autoescape everything, so names, keys, inputs, results and errors that users
or steps wrote show as text, never as markup. A dashboard route never answers with a
traceback or a JSON error: :class:`PageRoute` turns whatever it raises into a page that
says what happened (or into JSON for the small endpoints the pages poll).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ... import errors
from ..errors import status_of

logger = logging.getLogger("fuseline.server")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: Longest text a table cell shows of a result or inputs before cutting it.
SHORT = 120


class NeedLogin(Exception):
    """No valid session: pages send the browser to the sign-in form."""


class Refused(Exception):
    """A request the dashboard refuses with ``status`` and a sentence for people."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def as_json(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, sort_keys=True, default=str)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else as_json(value)
    return text if len(text) <= SHORT else text[: SHORT - 1] + "…"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    env.filters.update(when=_when, json=as_json, short=_short, url=lambda v: quote(str(v), safe=""))
    env.globals.update(duration=_duration)
    return env


ENV = _environment()


def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """The template rendered with ``values`` (and the request, for the signed-in user)."""
    html = ENV.get_template(template).render(
        request=request, viewer=getattr(request.state, "viewer", None), **values
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def problem(request: Request, status: int, title: str, message: str) -> Response:
    """A failure as the caller can read it: JSON for ``*.json`` endpoints, a page otherwise."""
    if request.url.path.endswith(".json"):
        return JSONResponse({"error": {"title": title, "message": message}}, status_code=status)
    return page(request, "error.html", status=status, title=title, message=message)


def failure(request: Request, exc: Exception) -> Response:
    """What the dashboard answers for an exception a route raised."""
    if isinstance(exc, NeedLogin):
        if request.url.path.endswith(".json"):
            return problem(request, 401, "Signed out", "sign in again")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    if isinstance(exc, Refused):
        title = "Not allowed" if exc.status == 403 else "Cannot do that"
        return problem(request, exc.status, title, str(exc))
    if isinstance(exc, errors.FuselineError):
        status = status_of(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return problem(request, status, _title(status), str(exc))
    if isinstance(exc, RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        return problem(request, 400, "Bad request", f"these values are not valid: {fields}")
    if isinstance(exc, HTTPException):
        return problem(request, exc.status_code, _title(exc.status_code), str(exc.detail))
    logger.exception("dashboard %s %s failed", request.method, request.url.path)
    return problem(request, 500, "Something went wrong", "the server could not show this page; see its log")


def _title(status: int) -> str:
    return {401: "Signed out", 403: "Not allowed", 404: "Not found", 409: "Cannot do that"}.get(
        status, "Service unavailable" if status >= 500 else "Bad request"
    )


class PageRoute(APIRoute):
    """A route whose failures are :func:`failure` pages rather than the API's JSON errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every failure becomes a page, never a traceback
                return failure(request, exc)

        return guarded
