"""The session cookie and CSRF tokens on their own: signed, expiring, tamper-proof, tied together."""

from __future__ import annotations

from fuseline.service.dashboard import sessions

SECRET = b"s" * 32


def test_a_cookie_states_what_it_was_issued_for_and_not_the_token() -> None:
    value, claims = sessions.issue(SECRET, "0123456789ab", "ops", now=1000)
    assert sessions.read(SECRET, value, now=1001) == claims
    assert claims.token_id == "0123456789ab" and claims.name == "ops"
    assert claims.expires_at == 1000 + sessions.SESSION_SECONDS


def test_expired_tampered_or_foreign_cookies_are_refused() -> None:
    value, _ = sessions.issue(SECRET, "0123456789ab", "ops", now=1000)
    assert sessions.read(SECRET, value, now=1000 + sessions.SESSION_SECONDS) is None
    payload, signature = value.split(".")
    forged, _ = sessions.issue(b"x" * 32, "0123456789ab", "admin", now=1000)
    for bad in (
        forged,
        forged.split(".")[0] + "." + signature,
        payload + "." + signature[:-2],
        payload,
        "",
        None,
        "a.b.c",
        "%%%.###",
        "x" * 5000,
    ):
        assert sessions.read(SECRET, bad, now=1001) is None, bad


def test_csrf_tokens_belong_to_one_session() -> None:
    token = sessions.csrf_token(SECRET, "session-a")
    assert sessions.csrf_valid(SECRET, "session-a", token)
    assert not sessions.csrf_valid(SECRET, "session-b", token)
    assert not sessions.csrf_valid(b"y" * 32, "session-a", token)
    assert not sessions.csrf_valid(SECRET, "session-a", None)
    assert not sessions.csrf_valid(SECRET, "session-a", "")
    assert not sessions.csrf_valid(SECRET, "session-a", token[:-1])
