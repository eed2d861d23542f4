"""Errors as HTTP answers: a status that says what kind of refusal it is, and a JSON body
(``{"error": {"type", "message", "fields"}}``) the client turns back into the same error.

Nothing a user sends ends in a 500 with a traceback: bad JSON, a body that does not fit
the schema, an unknown id, an oversize body all get a 4xx and a sentence.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import errors
from . import wire

logger = logging.getLogger("fuseline.server")

#: The status of each kind of refusal; the first class an error is an instance of wins.
STATUSES: list[tuple[type[errors.FuselineError], int]] = [
    (errors.UnknownInstance, 404),
    (errors.UnknownStep, 404),
    (errors.UnknownWorkflow, 404),
    (errors.UnknownSchedule, 404),
    (errors.UnknownWorker, 404),
    (errors.LeaseLost, 409),
    (errors.ReportConflict, 409),
    (errors.KeyConflict, 409),
    (errors.SignalConflict, 409),
    (errors.SchemaConflict, 409),
    (errors.InvalidTransition, 409),
    (errors.WorkerExpired, 409),
    (errors.DatabaseUnavailable, 503),
    (errors.DatabaseError, 500),
]


def status_of(exc: errors.FuselineError) -> int:
    if isinstance(exc, errors.AccessDenied):
        return exc.status
    for cls, status in STATUSES:
        if isinstance(exc, cls):
            return status
    return 400  # every other error fuseline raises on purpose is about what was sent


def error_body(kind: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "fields": fields or {}}}


def install(app: FastAPI) -> None:
    """Register the handlers that turn every refusal into a JSON 4xx (or 503)."""

    @app.exception_handler(errors.FuselineError)
    async def fuseline_error(request: Request, exc: errors.FuselineError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": wire.encode_error(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(_problem(p) for p in exc.errors()[:5])
        return JSONResponse(error_body("InvalidRequest", f"the request is not valid: {problems}"), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body("HTTPError", str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(
            error_body("InvalidRequest", str(exc).splitlines()[0] if str(exc) else "bad value"), 400
        )


def _problem(problem: dict[str, Any]) -> str:
    if problem.get("type") == "json_invalid":
        return f"the body is not valid JSON ({(problem.get('ctx') or {}).get('error', 'malformed')})"
    where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
    return f"{where or 'body'}: {problem.get('msg', 'invalid')}"
