"""Who may call what: bearer tokens checked on every API request, by role.

- ``worker``: the worker API only (register, claim, report, heartbeat, release, wait);
- ``viewer``: read-only (instances, explanations, events, workers, schedules);
- ``operator``: everything, the worker API included, and every change (submit, cancel,
  retry, repair, signal, schedules).

No token, or one the server does not know (unknown, revoked, malformed), is a 401; a
token whose role lacks the right is a 403. The token is never logged: it is read from
the ``Authorization`` header here and handed to the token store only.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends
from starlette.requests import Request

from ..errors import AccessDenied
from .context import context_of
from .tokens import Identity, Role

WORKER_API = frozenset({Role.WORKER, Role.OPERATOR})
READ = frozenset({Role.VIEWER, Role.OPERATOR})
CHANGE = frozenset({Role.OPERATOR})
ANY_ROLE = frozenset(Role)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def identify(request: Request) -> Identity:
    """The verified identity of the request's bearer token; AccessDenied (401) otherwise."""
    token = bearer_token(request)
    if token is None:
        raise AccessDenied("no token: send 'Authorization: Bearer TOKEN' (see: fuseline tokens create)")
    identity = context_of(request).tokens.verify(token)
    if identity is None:
        raise AccessDenied("the token is not valid: unknown, revoked or mistyped")
    return identity


def allowed(roles: frozenset[Role], what: str) -> Callable[[Request], Identity]:
    """A dependency: the caller's identity, if its role is one of ``roles`` (else 403)."""

    def check(identity: Identity = Depends(identify)) -> Identity:  # noqa: B008 (FastAPI's way)
        if identity.role not in roles:
            wanted = " or ".join(sorted(r.value for r in roles))
            raise AccessDenied(
                f"token {identity.name!r} has the {identity.role.value} role; {what} needs {wanted}",
                status=403,
            )
        return identity

    return check


worker_api = allowed(WORKER_API, "the worker API")
reader = allowed(READ, "reading instances")
changer = allowed(CHANGE, "changing instances")
anyone = allowed(ANY_ROLE, "this")
