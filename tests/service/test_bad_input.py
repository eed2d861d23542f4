"""What a client may send wrong, each answered with a 4xx and a JSON error body, and nothing written.

One real server process per module over a database of its own (a second one with a small body
limit, for 413s). After each refusal the database's rows are compared with those before it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from fuseline import Status, StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import upgrade
from fuseline.broker.sql.models import Base
from fuseline.clients.http import HttpBrokerClient
from fuseline.errors import (
    AccessDenied,
    FuselineError,
    LeaseLost,
    UnknownInstance,
    UnknownSchedule,
    UnknownWorker,
)
from fuseline.service.server import ServerSettings
from fuseline.service.tokens import TokenStore
from fuseline.workflow import WorkflowSchema
from tests.conftest import url_text
from tests.contract.workflows import SINGLE
from tests.support.databases import PostgresServer
from tests.support.servers import ServerProcess, create_token

#: The small server's body limit: a few reports' worth.
SMALL_LIMIT = 4096
UNKNOWN = "5f0c1a7e-0000-4000-8000-000000000003"


@dataclass
class Site:
    server: ServerProcess
    small: ServerProcess
    database_url: str
    operator: str
    engine: sa.Engine

    def http(self, server: ServerProcess | None = None, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{(server or self.server).url}/api/v1",
            headers={"authorization": f"Bearer {token or self.operator}"},
        )

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every fuseline table (tokens and secrets too): what 'nothing written' means."""
        with self.engine.connect() as conn:
            return {
                name: sorted(map(tuple, conn.execute(sa.select(table)).all()), key=repr)
                for name, table in Base.metadata.tables.items()
            }


@pytest.fixture(scope="module")
def site(postgres_server: PostgresServer) -> Iterator[Site]:
    url = postgres_server.create_database("fuseline_bad_input")
    engine = create_database_engine(url)
    upgrade(engine)
    text = url_text(url)
    operator = create_token(text, "bad-input-operator", "operator")
    server = ServerProcess(ServerSettings(text, connections=4, listen=False)).start()
    small = ServerProcess(ServerSettings(text, connections=2, listen=False, max_body_bytes=SMALL_LIMIT))
    try:
        yield Site(server, small.start(), text, operator, engine)
    finally:
        server.kill()
        small.kill()
        engine.dispose()
        postgres_server.drop_database(url)


@pytest.fixture
def client(site: Site) -> Iterator[HttpBrokerClient]:
    made = HttpBrokerClient(site.server.url, site.operator)
    yield made
    made.close()


def refused(response: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with a JSON error body that says something; the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == {"type", "message", "fields"}, error
    assert error["message"].strip(), error
    if kind is not None:
        assert error["type"] == kind, error
    return error


def nothing_written(
    site: Site, send: Callable[[], httpx.Response], status: int, kind: str | None = None
) -> str:
    before = site.rows()
    error = refused(send(), status, kind)
    assert site.rows() == before, "a refused request changed the database"
    return error["message"]


def single(workflow_id: str) -> WorkflowSchema:
    """The contract suite's one-step workflow under an id of this test's own (so a test claims
    only its own instances)."""
    return dataclasses.replace(SINGLE.to_schema(), workflow_id=workflow_id)


#: A valid schema for bodies: no worker serves it, so what it queues stays queued.
SCHEMA = single("bad-input-unserved").to_dict()


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{not json", "JSON"),
        (b'{"schema": {"workflow_id": ', "JSON"),
        (b"\xff\xfe\x00garbage", ""),
        (b"", ""),
    ],
    ids=["broken", "cut short", "not text", "empty"],
)
def test_a_body_that_is_not_json_is_a_400(site: Site, body: bytes, where: str) -> None:
    with site.http() as http:
        send = lambda: http.post("/instances", content=body, headers={"content-type": "application/json"})  # noqa: E731
        message = nothing_written(site, send, 400, "InvalidRequest")
    assert where in message


@pytest.mark.parametrize(
    ("path", "body", "kind", "says"),
    [
        ("/instances", [1, 2], "InvalidRequest", "body"),
        ("/instances", {"schema": 5, "dispatches": "x"}, "InvalidRequest", "dispatches"),
        ("/instances", {"schema": SCHEMA, "dispatches": []}, "InvalidRequest", "dispatches"),
        ("/instances", {"schema": {"nope": 1}, "dispatches": [{}]}, "WorkflowDefinitionError", "schema"),
        ("/instances", {"schema": SCHEMA, "dispatches": [{"at": "soon"}]}, "InvalidRequest", "at"),
        ("/instances", {"schema": SCHEMA, "dispatches": [{"delay": -5}]}, None, "delay"),
        ("/workers", {"schemas": "all"}, "InvalidRequest", "schemas"),
        ("/workers", {"schemas": [{"workflow_id": 1}]}, "WorkflowDefinitionError", "schema"),
        ("/workflows", {"schemas": [{}]}, "WorkflowDefinitionError", "schema"),
        ("/running", {"workflows": [["only-one"]]}, "InvalidRequest", "workflows"),
        (f"/workers/{UNKNOWN}/claim", {"limit": 0}, "InvalidRequest", "limit"),
        (f"/workers/{UNKNOWN}/release", {"assignments": [{"a": 1}]}, "BrokerError", "malformed"),
        (f"/workers/{UNKNOWN}/report", {"state": "SUCCEEDED"}, "InvalidRequest", "instance_id"),
        (f"/instances/{UNKNOWN}/signals", {"name": 5}, "InvalidRequest", "name"),
        (f"/instances/{UNKNOWN}/plan", {"action": "explode", "step": "s"}, "InvalidRequest", "action"),
        ("/schedules", {"name": "n", "schema": SCHEMA, "cron": "every day"}, "ScheduleError", "cron"),
        ("/schedules", {"name": "n", "schema": SCHEMA, "every": 60, "inputs": "[1]"}, None, "object"),
    ],
)
def test_a_body_of_the_wrong_shape_is_a_400_that_says_what_is_wrong(
    site: Site, path: str, body: Any, kind: str | None, says: str
) -> None:
    with site.http() as http:
        message = nothing_written(site, lambda: http.post(path, json=body), 400, kind)
    assert says in message


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", f"/instances/{UNKNOWN}", "UnknownInstance"),
        ("GET", "/instances/no-such-id/explain", "UnknownInstance"),
        ("GET", f"/instances/{UNKNOWN}/events", "UnknownInstance"),
        ("POST", f"/instances/{UNKNOWN}/cancel", "UnknownInstance"),
        ("POST", f"/workers/{UNKNOWN}/heartbeat", "UnknownWorker"),
        ("POST", "/workers/not-a-uuid/claim", "UnknownWorker"),
        ("DELETE", f"/workers/{UNKNOWN}", None),
        ("POST", "/schedules/no-such-schedule/pause", "UnknownSchedule"),
        ("GET", "/instances?after=no-such-id", "UnknownInstance"),
    ],
)
def test_an_unknown_id_is_a_404(site: Site, method: str, path: str, kind: str | None) -> None:
    with site.http() as http:
        if kind is None:  # deregistering twice is harmless: an unknown worker is a 404 or nothing
            assert http.request(method, path).status_code in (200, 404)
            return
        nothing_written(
            site, lambda: http.request(method, path, json={} if method == "POST" else None), 404, kind
        )


@pytest.mark.parametrize(
    "instance_id", ["a/b", "../../workers", "x?limit=1&status=FAILED", "x#frag", "%2F", "a b"]
)
def test_ids_with_slashes_or_query_characters_stay_one_unknown_id(
    site: Site, client: HttpBrokerClient, instance_id: str
) -> None:
    """The client quotes ids, so none can reach another route or add a parameter: each is refused as
    an id, and nothing is written."""
    before = site.rows()
    with pytest.raises(FuselineError) as raised:
        client.get_instance(instance_id)
    if "/" not in instance_id:  # a '/' splits the path however it is quoted: no route has it
        assert isinstance(raised.value, UnknownInstance) and instance_id in str(raised.value)
    with pytest.raises(FuselineError):
        client.cancel_instance(instance_id)
    assert site.rows() == before


@pytest.mark.parametrize("name", ["team/nightly", "a/pause", "fire", "x?y=1", "../instances"])
def test_step_and_schedule_names_with_slashes_reach_their_route(
    site: Site, client: HttpBrokerClient, name: str
) -> None:
    """Names are free text ('/' included): each reaches its own route and is refused as unknown."""
    before = site.rows()
    with pytest.raises(UnknownSchedule) as raised:
        client.pause_schedule(name)
    assert name in str(raised.value)
    with pytest.raises(UnknownSchedule):
        client.remove_schedule(name)
    with pytest.raises(UnknownInstance):
        client.set_step_output(UNKNOWN, name, 1)
    assert site.rows() == before


def test_an_oversize_body_is_a_413_with_or_without_its_length(site: Site) -> None:
    big = {"schema": SCHEMA, "dispatches": [{"inputs": {"x": 1, "pad": "p" * SMALL_LIMIT}}]}
    content = httpx.Request("POST", "/", json=big).content

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 512):
            yield content[start : start + 512]

    def whole() -> httpx.Response:
        return http.post("/instances", content=content, headers={"content-type": "application/json"})

    def chunked() -> httpx.Response:
        return http.post("/instances", content=chunks(), headers={"content-type": "application/json"})

    with site.http(site.small) as http:
        message = nothing_written(site, whole, 413, "BodyTooLarge")
        assert str(SMALL_LIMIT) in message
        assert "content-length" not in chunked().request.headers
        nothing_written(site, chunked, 413, "BodyTooLarge")
        fits = {"schema": SCHEMA, "dispatches": [{"inputs": {"x": 1}}]}
        assert http.post("/instances", json=fits).status_code == 201, "a body under the limit must pass"


def test_a_report_for_a_step_the_worker_does_not_hold_is_a_409_and_the_step_is_unchanged(
    site: Site, client: HttpBrokerClient
) -> None:
    schema = single("bad-input-lease")
    holder = client.register_worker([schema])
    other = client.register_worker([schema])
    instance_id = client.dispatch_workflow(schema, {"x": 3})
    assignment = client.get_step(holder)
    assert assignment is not None and assignment.instance_id == instance_id
    report = StepReport(schema.workflow_id, instance_id, assignment.step_name, Status.SUCCEEDED, 6,
                        assignment.attempt)  # fmt: skip
    before = site.rows()
    with pytest.raises(LeaseLost):
        client.report_step(other, report)
    with site.http() as http:
        body = {"workflow_id": schema.workflow_id, "instance_id": instance_id,
                "step_name": assignment.step_name, "state": "SUCCEEDED", "result": 6,
                "attempt": assignment.attempt}  # fmt: skip
        refused(http.post(f"/workers/{other}/report", json=body), 409, "LeaseLost")
    assert site.rows() == before
    step = client.get_instance(instance_id).step(assignment.step_name)
    assert step.state is Status.RUNNING
    client.report_step(holder, report)  # the holder's report still counts
    assert client.get_instance(instance_id).status is Status.SUCCEEDED
    with pytest.raises(UnknownWorker):
        client.report_step(UNKNOWN, report)


def test_a_result_that_is_not_json_fails_the_step_with_the_local_brokers_message(
    site: Site, client: HttpBrokerClient
) -> None:
    local = SqlBroker(site.database_url)
    try:
        messages = []
        schema = single("bad-input-not-json")
        for broker in (client, local):
            worker = broker.register_worker([schema])
            instance_id = broker.dispatch_workflow(schema, {"x": 1})
            assignment = broker.get_step(worker)
            assert assignment is not None and assignment.instance_id == instance_id
            report = StepReport(schema.workflow_id, instance_id, assignment.step_name, Status.SUCCEEDED,
                                {"when": {1, 2}}, assignment.attempt)  # fmt: skip
            broker.report_step(worker, report)
            step = broker.get_instance(instance_id).step(assignment.step_name)
            assert step.state is Status.FAILED
            messages.append(step.error)
    finally:
        local.close()
    through_server, in_process = messages
    assert through_server == in_process and "JSON" in in_process, messages


def test_a_token_revoked_mid_session_is_refused_within_about_a_second(site: Site) -> None:
    token = create_token(site.database_url, "bad-input-revoked", "operator")
    client = HttpBrokerClient(site.server.url, token)
    try:
        client.list_instances()
        broker = SqlBroker(site.database_url)
        try:
            TokenStore(broker).revoke("bad-input-revoked")
        finally:
            broker.close()
        revoked_at = time.monotonic()
        while True:
            try:
                client.list_instances()
            except AccessDenied as exc:
                assert exc.status == 401 and "not valid" in str(exc)
                break
            assert time.monotonic() - revoked_at < 2.0, "the revoked token still works"
            time.sleep(0.05)
    finally:
        client.close()
