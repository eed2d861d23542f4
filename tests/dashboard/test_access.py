"""Signing in, roles, CSRF and escaping, over HTTP against a real server process."""

from __future__ import annotations

import time

from fuseline.service.dashboard import sessions
from fuseline.service.tokens import TokenStore
from tests.dashboard.conftest import Site, csrf_of, post_login
from tests.dashboard.flows import pipeline

#: A revoked token's sessions end within this (the dashboard re-reads a token every 0.5 s).
REVOKE_SECONDS = 1.0


def test_pages_need_a_session(site: Site) -> None:
    with site.client() as anonymous:
        for path in ("/", "/instances", "/workers", "/schedules", "/instances/abc"):
            response = anonymous.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login?next=")
        live = anonymous.get("/instances/abc/live.json")
        assert live.status_code == 401 and live.json()["error"]["title"] == "Signed out"
        assert anonymous.get("/login").status_code == 200


def test_sign_in_sets_a_strict_httponly_cookie_without_the_token(site: Site) -> None:
    with site.client() as client:
        response = post_login(client, {"token": site.tokens["operator"], "next": "/workers"})
        assert response.status_code == 303 and response.headers["location"] == "/workers"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        secret_part = site.tokens["operator"].rsplit("_", 1)[1]
        assert secret_part not in cookie and site.tokens["operator"] not in cookie
        page = client.get("/instances")
        assert page.status_code == 200 and "dash-operator" in page.text


def test_bad_and_worker_tokens_cannot_sign_in(site: Site) -> None:
    with site.client() as client:
        bad = post_login(client, {"token": "flt_000000000000_" + "a" * 43})
        assert bad.status_code == 401 and "not valid" in bad.text
        assert sessions.COOKIE not in bad.headers.get("set-cookie", "")
        worker = post_login(client, {"token": site.tokens["worker"]})
        assert worker.status_code == 403 and "worker token" in worker.text
        assert sessions.COOKIE not in worker.headers.get("set-cookie", "")
        assert post_login(client, {"next": "https://evil.example/"}).status_code == 401


def test_sign_in_goes_back_only_to_this_site(site: Site) -> None:
    with site.client() as client:
        for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/\t/evil.example"):
            response = post_login(client, {"token": site.tokens["viewer"], "next": target})
            assert response.headers["location"] == "/instances", target


def test_a_viewer_sees_no_actions_and_its_changes_are_refused(site: Site) -> None:
    instance_id = site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2})
    with site.client("viewer") as viewer:
        page = viewer.get(f"/instances/{instance_id}")
        assert page.status_code == 200 and 'data-step="slow"' in page.text
        assert "data-action" not in page.text and "/confirm" not in page.text
        csrf = csrf_of(page.text)  # the sign-out form's: a valid token of this session
        for path in ("confirm", "apply"):
            refused = viewer.post(f"/instances/{instance_id}/{path}", data={"csrf": csrf, "action": "cancel"})
            assert refused.status_code == 403 and "only operators" in refused.text
    assert site.broker.get_instance(instance_id).status.value == "RUNNING"


def test_changes_need_the_sessions_csrf_token(site: Site) -> None:
    instance_id = site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2})
    with site.client("operator") as operator, site.client("operator") as other:
        csrf = csrf_of(operator.get(f"/instances/{instance_id}").text)
        foreign = csrf_of(other.get("/instances").text)
        for given in (None, "", "forged", foreign, csrf[:-1]):
            data = {"action": "cancel"} | ({"csrf": given} if given is not None else {})
            refused = operator.post(f"/instances/{instance_id}/apply", data=data)
            assert refused.status_code == 403 and "security token" in refused.text, given
        assert operator.post("/logout").status_code == 403
        assert site.broker.get_instance(instance_id).status.value == "RUNNING"
        header = operator.post(
            f"/instances/{instance_id}/confirm",
            data={"action": "cancel"},
            headers={sessions.CSRF_HEADER: csrf},
        )
        assert header.status_code == 200 and "Dry run" in header.text
        assert site.broker.get_instance(instance_id).status.value == "RUNNING"  # a dry run changes nothing
        applied = operator.post(f"/instances/{instance_id}/apply", data={"action": "cancel", "csrf": csrf})
        assert applied.status_code == 303
    assert site.broker.get_instance(instance_id).status.value == "CANCELLED"


def test_a_revoked_token_ends_its_sessions(site: Site) -> None:
    with site.client("operator") as client:
        assert client.get("/instances").status_code == 200
        TokenStore(site.broker).revoke("dash-operator")
        revoked_at = time.monotonic()
        while client.get("/instances").status_code == 200:
            assert time.monotonic() - revoked_at < REVOKE_SECONDS + 1.0, "the session outlived its token"
            time.sleep(0.05)
        print(f"session ended {time.monotonic() - revoked_at:.2f} s after the revoke")
        assert client.get("/instances").headers["location"].startswith("/login")


def test_signing_out_ends_the_session(site: Site) -> None:
    with site.client("operator") as client:
        csrf = csrf_of(client.get("/instances").text)
        response = client.post("/logout", data={"csrf": csrf})
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert client.get("/instances").status_code == 303


def test_text_from_users_is_escaped(site: Site) -> None:
    evil = "<script>alert('x')</script>"
    instance_id = site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2}, key=evil)
    with site.client("operator") as client:
        for path in (f"/instances/{instance_id}", "/instances", f"/instances?key={evil}"):
            page = client.get(path, params=None)
            assert page.status_code == 200
            assert evil not in page.text and "&lt;script&gt;" in page.text, path


def test_failures_are_friendly_pages(site: Site) -> None:
    instance_id = site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2})
    with site.client("operator") as client:
        csrf = csrf_of(client.get("/instances").text)
        cases = [
            (client.get("/instances/not-an-instance"), 404),
            (client.get("/instances/00000000-0000-0000-0000-000000000000"), 404),
            (client.get("/instances?status=BOGUS"), 400),
            (client.get("/instances?after=00000000-0000-0000-0000-000000000000"), 404),
            (client.post(f"/instances/{instance_id}/confirm", data={"csrf": csrf, "action": "nope"}), 400),
            (
                client.post(
                    f"/instances/{instance_id}/confirm",
                    data={"csrf": csrf, "action": "set-output", "step": "slow", "result": "{not json"},
                ),
                400,
            ),
            (client.post(f"/instances/{instance_id}/confirm", data={"csrf": csrf, "action": "retry"}), 409),
            (
                client.post(
                    f"/instances/{instance_id}/confirm", data={"csrf": csrf, "action": "skip", "step": "nope"}
                ),
                404,
            ),
        ]
        for response, status in cases:
            assert response.status_code == status, (response.request.url, response.text)
            assert response.headers["content-type"].startswith("text/html")
            assert "Traceback" not in response.text and 'id="problem-message"' in response.text


def test_lists_of_workers_and_schedules(site: Site) -> None:
    site.broker.register_worker([pipeline.to_schema()], host="box-1", pid=4242)
    with site.client("viewer") as client:
        workers = client.get("/workers")
        assert workers.status_code == 200 and "box-1" in workers.text and "4242" in workers.text
        schedules = client.get("/schedules")
        assert schedules.status_code == 200 and "No schedules." in schedules.text


def test_each_action_applies_after_its_dry_run(site: Site) -> None:
    instance_id = site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 2})
    with site.client("operator") as client:
        page = client.get(f"/instances/{instance_id}")
        assert 'id="explain"' in page.text and "no_worker" in page.text  # why prepare waits
        csrf = csrf_of(page.text)
        steps = [
            {"action": "set-output", "step": "prepare", "result": "2"},
            {"action": "skip", "step": "tail"},
            {"action": "signal", "name": "go", "data": '{"ok": true}'},
            {"action": "cancel"},
        ]
        for fields in steps:
            dry = client.post(f"/instances/{instance_id}/confirm", data=fields | {"csrf": csrf})
            assert dry.status_code == 200 and 'id="apply"' in dry.text, (fields, dry.text[-700:])
            applied = client.post(f"/instances/{instance_id}/apply", data=fields | {"csrf": csrf})
            assert applied.status_code == 303, (fields, applied.text[:400])
        info = site.broker.get_instance(instance_id)
        assert info.status.value == "CANCELLED"
        assert info.step("prepare").state.value == "SUCCEEDED" and info.step("prepare").result == 2
        assert info.step("tail").state.value == "SKIPPED" and info.step("slow").state.value == "CANCELLED"
        retried = client.post(f"/instances/{instance_id}/confirm", data={"action": "retry", "csrf": csrf})
        assert retried.status_code == 200 and "retry by dash-operator" in retried.text
        history = " ".join(e.detail or "" for e in site.broker.instance_events(instance_id))
        assert "dash-operator" in history
