"""Login CSRF: the sign-in form only works with the pre-session the server gave this browser.

Over HTTP against a real server process (a post that skips the form is what another site's
page would send), and the pre-session's signing on its own.
"""

from __future__ import annotations

import httpx

from fuseline.service.dashboard import presession, sessions
from tests.dashboard.conftest import Site, login_csrf_of

SECRET = b"p" * 32


def _client(site: Site) -> httpx.Client:
    return httpx.Client(base_url=site.url, timeout=30, follow_redirects=False)


def _form_field(client: httpx.Client) -> str:
    """Fetch the sign-in form (the client keeps its pre-session cookie); its hidden field."""
    form = client.get("/login")
    assert form.status_code == 200
    return login_csrf_of(form.text)


def _signed_in(client: httpx.Client) -> bool:
    return client.get("/instances").status_code == 200


def test_the_form_sets_a_short_lived_strict_httponly_pre_session(site: Site) -> None:
    with _client(site) as client:
        field = _form_field(client)
        cookie = client.get("/login").headers["set-cookie"]
        assert cookie.startswith(f"{presession.COOKIE}=") and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower() and "Path=/login" in cookie
        assert f"Max-Age={presession.SECONDS}" in cookie
        value = client.cookies.get(presession.COOKIE, path="/login")
        assert value and field not in value and field != _form_field(client)  # a new nonce each time


def test_a_post_without_the_pre_session_is_refused(site: Site) -> None:
    token = site.tokens["operator"]
    with _client(site) as owner, _client(site) as other, _client(site) as stranger:
        field, other_field = _form_field(owner), _form_field(other)
        attempts = [
            (stranger, {"token": token}),  # another site's form: neither cookie nor field
            (stranger, {"token": token, "login_csrf": field}),  # the field without its cookie
            (owner, {"token": token}),  # the cookie without the field
            (owner, {"token": token, "login_csrf": ""}),
            (owner, {"token": token, "login_csrf": "forged"}),
            (owner, {"token": token, "login_csrf": field[:-1]}),
            (owner, {"token": token, "login_csrf": other_field}),  # another nonce's field
        ]
        for client, data in attempts:
            refused = client.post("/login", data=data)
            assert refused.status_code == 403, data
            assert "did not come from this site" in refused.text and "Traceback" not in refused.text
            assert sessions.COOKIE not in refused.headers.get("set-cookie", ""), data
            assert not _signed_in(client), data
        # the refusal hands out a new form, which then works
        again = owner.post("/login", data={"token": token, "login_csrf": login_csrf_of(refused.text)})
        assert again.status_code == 303 and _signed_in(owner)
        accepted = other.post("/login", data={"token": token, "login_csrf": other_field})
        assert accepted.status_code == 303 and _signed_in(other)
        assert presession.COOKIE not in other.cookies  # used up: signing in clears it


def test_a_tampered_cookie_is_refused(site: Site) -> None:
    with _client(site) as client:
        field = _form_field(client)
        value = client.cookies.get(presession.COOKIE, path="/login")
        assert value is not None
        payload, signature = value.split(".")
        client.cookies.set(presession.COOKIE, f"{payload}.{signature[::-1]}", path="/login")
        refused = client.post("/login", data={"token": site.tokens["viewer"], "login_csrf": field})
        assert refused.status_code == 403 and not _signed_in(client)


def test_pre_sessions_expire_and_belong_to_their_secret() -> None:
    pre = presession.issue(SECRET, now=1000)
    assert presession.valid(SECRET, pre.cookie, pre.field, now=1001)
    assert not presession.valid(SECRET, pre.cookie, pre.field, now=1000 + presession.SECONDS)
    assert not presession.valid(b"q" * 32, pre.cookie, pre.field, now=1001)
    other = presession.issue(SECRET, now=1000)
    assert other.field != pre.field
    assert not presession.valid(SECRET, pre.cookie, other.field, now=1001)
    assert not presession.valid(SECRET, None, pre.field, now=1001)
    assert not presession.valid(SECRET, pre.cookie, None, now=1001)
    assert not presession.valid(SECRET, "x" * 2000, pre.field, now=1001)
    # a session cookie is not a pre-session cookie, though both are signed with the same secret
    session_cookie, _ = sessions.issue(SECRET, "0123456789ab", "ops", now=1000)
    assert presession.nonce_of(SECRET, session_cookie, now=1001) is None
