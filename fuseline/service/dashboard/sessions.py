"""Dashboard sessions: a signed cookie, and CSRF tokens tied to it.

The cookie says which token signed in (its public id and name), a random session id and
when the session expires, signed with HMAC-SHA256 under the secret every server process
shares (``TokenStore.session_secret``), so any process accepts it and nobody can forge or
stretch one. The token itself never enters the cookie: each request instead checks that
the token with that id is still live, so revoking it ends its sessions everywhere.

A CSRF token is the HMAC of the session id under the same secret (with another label):
a page of another site can neither read it nor compute it, so a form it submits is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "fuseline_session"
#: How long a sign-in lasts; signing in again starts a new session.
SESSION_SECONDS = 12 * 3600
#: The form field (or header) CSRF tokens travel in.
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
_COOKIE_LABEL = b"fuseline-dashboard-cookie\x00"
_CSRF_LABEL = b"fuseline-dashboard-csrf\x00"
#: Longer cookies are refused before decoding (a real one is under 200 bytes).
MAX_COOKIE_LENGTH = 1024


@dataclass(frozen=True)
class SessionClaims:
    """What a valid cookie states; the caller still checks that the token is live."""

    session_id: str
    token_id: str
    name: str
    expires_at: int


def _sign(secret: bytes, label: bytes, data: bytes) -> bytes:
    return hmac.new(secret, label + data, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: bytes, token_id: str, name: str, *, now: float | None = None) -> tuple[str, SessionClaims]:
    """A new session for the token ``token_id``: the cookie's value and what it states."""
    moment = time.time() if now is None else now
    claims = SessionClaims(secrets.token_urlsafe(16), token_id, name, int(moment) + SESSION_SECONDS)
    payload = json.dumps(
        {"s": claims.session_id, "t": claims.token_id, "n": claims.name, "e": claims.expires_at},
        separators=(",", ":"),
    ).encode()
    return f"{_b64(payload)}.{_b64(_sign(secret, _COOKIE_LABEL, payload))}", claims


def read(secret: bytes, value: str | None, *, now: float | None = None) -> SessionClaims | None:
    """The claims of a cookie this server signed and that has not expired; None otherwise."""
    if not value or len(value) > MAX_COOKIE_LENGTH or value.count(".") != 1:
        return None
    encoded, signature = value.split(".")
    try:
        payload, given = _unb64(encoded), _unb64(signature)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(given, _sign(secret, _COOKIE_LABEL, payload)):
        return None
    try:
        data = json.loads(payload)
        claims = SessionClaims(str(data["s"]), str(data["t"]), str(data["n"]), int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    moment = time.time() if now is None else now
    return claims if claims.expires_at > moment else None


def csrf_token(secret: bytes, session_id: str) -> str:
    """The CSRF token of a session: what its forms carry."""
    return _b64(_sign(secret, _CSRF_LABEL, session_id.encode()))


def csrf_valid(secret: bytes, session_id: str, given: str | None) -> bool:
    """Whether ``given`` is the session's CSRF token (compared in constant time)."""
    if not given or len(given) > 100:
        return False
    return hmac.compare_digest(given.encode(), csrf_token(secret, session_id).encode())
