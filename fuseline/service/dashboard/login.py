"""Signing in with an API token, and out again.

The token is checked once (``TokenStore.verify``: scrypt the first time, so a plain ``def``
route on the thread pool) and never stored: the session cookie keeps its id. Worker tokens
may not sign in; they are for the worker API only. The form itself is protected against
login CSRF by a pre-session (:mod:`.presession`).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..context import context_of
from ..tokens import Role, token_id_of
from . import presession, sessions
from .access import Form, checked_form, form_fields, secret_of
from .render import PageRoute, page

router = APIRouter(route_class=PageRoute, include_in_schema=False)


#: A path on this site: no scheme, no host, no backslash, space or control character (browsers
#: drop tabs and newlines from URLs, so ``/\t/evil.example`` would lead to another host).
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    if not target or _LOCAL_PATH.fullmatch(target) is None:
        return "/instances"
    return target


def _login_page(request: Request, target: str, *, status: int = 200, message: str | None = None) -> Response:
    """The sign-in form with a fresh pre-session: its cookie set, its field in the form."""
    pre = presession.issue(secret_of(request))
    response = page(request, "login.html", status=status, next=target, message=message, login_csrf=pre.field)
    response.set_cookie(
        presession.COOKIE,
        pre.cookie,
        max_age=presession.SECONDS,
        path=presession.PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, _safe_next(next))


@router.post("/login")
def login(request: Request, form: Form = Depends(form_fields)) -> Response:  # noqa: B008 (FastAPI's way)
    target = _safe_next(form.get("next"))
    cookie = request.cookies.get(presession.COOKIE)
    if not presession.valid(secret_of(request), cookie, form.get(presession.FIELD)):
        message = "This sign-in form expired or did not come from this site: sign in again here."
        return _login_page(request, target, status=403, message=message)
    token = form.get("token", "").strip()
    identity = context_of(request).tokens.verify(token) if token else None
    token_id = token_id_of(token)
    if identity is None or token_id is None:
        return _login_page(request, target, status=401, message="That token is not valid.")
    if identity.role is Role.WORKER:
        message = f"{identity.name} is a worker token: only viewer and operator tokens may sign in."
        return page(request, "error.html", status=403, title="Not allowed", message=message)
    value, _ = sessions.issue(secret_of(request), token_id, identity.name)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=sessions.SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(presession.COOKIE, path=presession.PATH, httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request, _: Form = Depends(checked_form)) -> Response:  # noqa: B008
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return response
