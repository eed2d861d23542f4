"""The pre-session of the sign-in form: CSRF protection before anyone is signed in.

Without it another site could post its own token to ``/login`` from a victim's browser and
sign that browser in as the attacker (login CSRF), so whatever the victim then does is seen
and done under the attacker's session. ``GET /login`` therefore sets a short-lived signed
cookie (HttpOnly, SameSite=Strict, path ``/login``) holding a random nonce, and puts the HMAC
of that nonce in a hidden field of the form; ``POST /login`` goes on only when both arrive
and match. A page of another site gets neither: the browser does not send a Strict cookie
with a cross-site post, and the field cannot be computed without the server's secret.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass

from .sessions import MAX_COOKIE_LENGTH, _b64, _sign, _unb64

COOKIE = "fuseline_login"
#: Only the sign-in form needs the cookie.
PATH = "/login"
#: How long a sign-in form stays usable: long enough to find and paste a token.
SECONDS = 15 * 60
#: The hidden field of the sign-in form.
FIELD = "login_csrf"
_COOKIE_LABEL = b"fuseline-dashboard-login-cookie\x00"
_FIELD_LABEL = b"fuseline-dashboard-login-csrf\x00"


@dataclass(frozen=True)
class PreSession:
    """A new pre-session: the cookie's value and the form field that belongs to it."""

    cookie: str
    field: str


def field_of(secret: bytes, nonce: str) -> str:
    """The form field of the pre-session with ``nonce``."""
    return _b64(_sign(secret, _FIELD_LABEL, nonce.encode()))


def issue(secret: bytes, *, now: float | None = None) -> PreSession:
    """A pre-session with a fresh random nonce, expiring :data:`SECONDS` from now."""
    moment = time.time() if now is None else now
    nonce = secrets.token_urlsafe(16)
    payload = json.dumps({"n": nonce, "e": int(moment) + SECONDS}, separators=(",", ":")).encode()
    cookie = f"{_b64(payload)}.{_b64(_sign(secret, _COOKIE_LABEL, payload))}"
    return PreSession(cookie, field_of(secret, nonce))


def nonce_of(secret: bytes, value: str | None, *, now: float | None = None) -> str | None:
    """The nonce of a pre-session cookie this server signed and that has not expired; else None."""
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
        nonce, expires_at = str(data["n"]), int(data["e"])
    except (ValueError, KeyError, TypeError):
        return None
    moment = time.time() if now is None else now
    return nonce if expires_at > moment else None


def valid(secret: bytes, cookie: str | None, given: str | None, *, now: float | None = None) -> bool:
    """Whether a sign-in post carries a live pre-session cookie and that cookie's field."""
    nonce = nonce_of(secret, cookie, now=now)
    if nonce is None or not given or len(given) > 100:
        return False
    return hmac.compare_digest(given.encode(), field_of(secret, nonce).encode())
