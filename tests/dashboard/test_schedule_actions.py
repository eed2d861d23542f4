"""Pausing, resuming and removing schedules from the schedules page, over HTTP against a real server.

Each check reads the schedule back from PostgreSQL (not from the page) after the post. The
schedule names hold a ``/`` (a schedule is named after its workflow id by default) and markup,
so the form must carry them intact and the page must show them as text.
"""

from __future__ import annotations

from datetime import datetime, timezone

import httpx

from fuseline.broker.schedules import ScheduleInfo
from fuseline.service.dashboard import sessions
from tests.dashboard.conftest import Site, csrf_of
from tests.dashboard.flows import pipeline

NAME = "team/<b>nightly</b>"
OTHER = "hourly"
ACTIONS = ("/schedules/pause", "/schedules/resume", "/schedules/remove/confirm", "/schedules/remove")


def _schedules(site: Site) -> dict[str, ScheduleInfo]:
    return {s.name: s for s in site.broker.list_schedules()}


def _add_two(site: Site) -> None:
    site.broker.add_schedule(pipeline, name=NAME, every=3600, inputs={"count": 1})
    site.broker.add_schedule(pipeline, name=OTHER, cron="0 * * * *")


def _post(client: httpx.Client, path: str, csrf: str, name: str) -> httpx.Response:
    return client.post(path, data={"csrf": csrf, "name": name})


def test_an_operator_pauses_and_resumes_a_schedule(site: Site) -> None:
    _add_two(site)
    with site.client("operator") as client:
        page = client.get("/schedules")
        assert page.status_code == 200 and NAME not in page.text and "team/&lt;b&gt;nightly" in page.text
        assert page.text.count('data-action="pause"') == 2 and page.text.count('data-action="remove"') == 2
        csrf = csrf_of(page.text)
        paused = _post(client, "/schedules/pause", csrf, NAME)
        assert paused.status_code == 303 and paused.headers["location"] == "/schedules"
        assert _schedules(site)[NAME].paused and not _schedules(site)[OTHER].paused
        page = client.get("/schedules").text
        assert page.count('data-action="resume"') == 1 and page.count('data-action="pause"') == 1
        assert "paused" in page
        assert _post(client, "/schedules/pause", csrf, NAME).status_code == 303  # again: no change
        assert _schedules(site)[NAME].paused
        before = datetime.now(timezone.utc)
        resumed = _post(client, "/schedules/resume", csrf, NAME)
        assert resumed.status_code == 303
        schedule = _schedules(site)[NAME]
        assert not schedule.paused and schedule.next_fire_at is not None and schedule.next_fire_at > before


def test_removing_a_schedule_asks_first(site: Site) -> None:
    _add_two(site)
    with site.client("operator") as client:
        csrf = csrf_of(client.get("/schedules").text)
        confirm = _post(client, "/schedules/remove/confirm", csrf, NAME)
        assert (
            confirm.status_code == 200 and 'id="apply"' in confirm.text and "cannot be undone" in confirm.text
        )
        assert NAME not in confirm.text and "team/&lt;b&gt;nightly" in confirm.text
        assert set(_schedules(site)) == {NAME, OTHER}  # the confirmation changes nothing
        removed = client.post("/schedules/remove", data={"csrf": csrf_of(confirm.text), "name": NAME})
        assert removed.status_code == 303 and removed.headers["location"] == "/schedules"
        assert set(_schedules(site)) == {OTHER}
        gone = _post(client, "/schedules/remove", csrf, NAME)
        assert gone.status_code == 404 and 'id="problem-message"' in gone.text
        unknown = _post(client, "/schedules/remove/confirm", csrf, "nope")
        assert unknown.status_code == 404 and "Traceback" not in unknown.text
        nameless = _post(client, "/schedules/pause", csrf, "")
        assert nameless.status_code == 400 and "choose a schedule" in nameless.text


def test_a_viewer_sees_no_buttons_and_its_posts_are_refused(site: Site) -> None:
    _add_two(site)
    with site.client("viewer") as viewer:
        page = viewer.get("/schedules")
        assert page.status_code == 200 and "hourly" in page.text
        assert "data-action" not in page.text and "/schedules/" not in page.text
        csrf = csrf_of(page.text)  # the sign-out form's: a valid token of this session
        for path in ACTIONS:
            refused = _post(viewer, path, csrf, NAME)
            assert refused.status_code == 403 and "only operators" in refused.text, path
    assert set(_schedules(site)) == {NAME, OTHER} and not _schedules(site)[NAME].paused


def test_schedule_actions_need_the_sessions_csrf_token(site: Site) -> None:
    _add_two(site)
    with site.client("operator") as operator, site.client("operator") as other:
        csrf = csrf_of(operator.get("/schedules").text)
        foreign = csrf_of(other.get("/schedules").text)
        for path in ACTIONS:
            for given in (None, "", "forged", foreign, csrf[:-1]):
                data = {"name": NAME} | ({"csrf": given} if given is not None else {})
                refused = operator.post(path, data=data)
                assert refused.status_code == 403 and "security token" in refused.text, (path, given)
        with httpx.Client(base_url=site.url, timeout=30) as anonymous:
            signed_out = anonymous.post("/schedules/pause", data={"csrf": csrf, "name": NAME})
            assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login")
        assert set(_schedules(site)) == {NAME, OTHER} and not _schedules(site)[NAME].paused
        header = operator.post("/schedules/pause", data={"name": NAME}, headers={sessions.CSRF_HEADER: csrf})
        assert header.status_code == 303 and _schedules(site)[NAME].paused
