"""Who is looking: the session behind a dashboard request, its role, and its CSRF check.

FastAPI dependencies. ``signed_in`` runs on the thread pool (it may read the token's row);
the others are cheap. A request without a valid, live session raises :class:`NeedLogin`
(pages redirect to the sign-in form); a viewer asking for a change, or a form without its
session's CSRF token, raises :class:`Refused` (a 403 page).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import Depends
from starlette.requests import Request

from ..context import context_of
from ..tokens import Identity, Role
from . import sessions
from .reads import DashboardReads
from .render import NeedLogin, Refused

Form = dict[str, str]


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a request: the token's identity and the session's CSRF token."""

    identity: Identity
    session_id: str
    csrf: str

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def can_change(self) -> bool:
        return self.identity.role is Role.OPERATOR


def reads_of(request: Request) -> DashboardReads:
    return request.app.state.dashboard_reads  # type: ignore[no-any-return]


def secret_of(request: Request) -> bytes:
    return context_of(request).tokens.session_secret()


def signed_in(request: Request) -> Viewer:
    """The request's session, if its cookie is genuine, unexpired and its token still live."""
    secret = secret_of(request)
    claims = sessions.read(secret, request.cookies.get(sessions.COOKIE))
    if claims is None:
        raise NeedLogin
    identity = reads_of(request).live_identity(claims.token_id)
    if identity is None or identity.name != claims.name or identity.role is Role.WORKER:
        raise NeedLogin
    viewer = Viewer(identity, claims.session_id, sessions.csrf_token(secret, claims.session_id))
    request.state.viewer = viewer
    return viewer


async def form_fields(request: Request) -> Form:
    """The fields of a url-encoded form (the first value of each), read without extra packages."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {name: values[0] for name, values in parse_qs(body, keep_blank_values=True).items()}


def checked_form(
    request: Request,
    viewer: Viewer = Depends(signed_in),  # noqa: B008 (FastAPI's way)
    form: Form = Depends(form_fields),  # noqa: B008
) -> Form:
    """The form of a state-changing POST, once its CSRF token matches the session's."""
    given = form.get(sessions.CSRF_FIELD) or request.headers.get(sessions.CSRF_HEADER)
    if not sessions.csrf_valid(secret_of(request), viewer.session_id, given):
        raise Refused("the form's security token is missing or out of date: reload the page and try again")
    return form


def operator_form(
    viewer: Viewer = Depends(signed_in),  # noqa: B008
    form: Form = Depends(checked_form),  # noqa: B008
) -> Form:
    """A checked form from an operator; viewers are refused (they may only look)."""
    if not viewer.can_change:
        raise Refused(f"{viewer.name} has the {viewer.identity.role.value} role: only operators make changes")
    return form
