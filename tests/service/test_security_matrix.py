"""Who may call what, for every route of the server: 401 without a valid token, 403 for a role
without the right, through for a role with it.

The routes are read from the application itself and must equal :data:`RIGHTS`, so a route added
later fails here until someone decides who may call it. One real server process per module,
over a database of its own; requests with a right may still fail (404, 400) for the made-up ids
and empty bodies they carry: what is checked is that they got past the door.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy.engine import URL
from starlette.routing import BaseRoute

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import upgrade
from fuseline.service.server import ServerSettings, build_app
from fuseline.service.tokens import TokenStore
from tests.conftest import url_text
from tests.support.databases import PostgresServer
from tests.support.servers import ServerProcess, create_token, free_port

#: Who may call each route: the right it needs.
WORKER_API, READ, CHANGE, ANY = "worker API", "read", "change", "any role"
RIGHTS: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/info"): WORKER_API,
    ("POST", "/api/v1/workflows"): WORKER_API,
    ("POST", "/api/v1/workers"): WORKER_API,
    ("DELETE", "/api/v1/workers/{worker_id}"): WORKER_API,
    ("POST", "/api/v1/workers/{worker_id}/claim"): WORKER_API,
    ("POST", "/api/v1/workers/{worker_id}/report"): WORKER_API,
    ("POST", "/api/v1/workers/{worker_id}/reports"): WORKER_API,
    ("POST", "/api/v1/workers/{worker_id}/report-and-claim"): WORKER_API,
    ("POST", "/api/v1/workers/{worker_id}/heartbeat"): WORKER_API,
    ("POST", "/api/v1/workers/{worker_id}/release"): WORKER_API,
    ("POST", "/api/v1/running"): WORKER_API,
    ("GET", "/api/v1/work"): WORKER_API,
    ("POST", "/api/v1/instances"): CHANGE,
    ("GET", "/api/v1/instances"): READ,
    ("GET", "/api/v1/instances/{instance_id}"): READ,
    ("GET", "/api/v1/instances/{instance_id}/explain"): READ,
    ("GET", "/api/v1/instances/{instance_id}/events"): READ,
    ("POST", "/api/v1/instances/{instance_id}/cancel"): CHANGE,
    ("POST", "/api/v1/instances/{instance_id}/retry"): CHANGE,
    ("POST", "/api/v1/instances/{instance_id}/steps/{step:path}/skip"): CHANGE,
    ("POST", "/api/v1/instances/{instance_id}/steps/{step:path}/output"): CHANGE,
    ("POST", "/api/v1/instances/{instance_id}/plan"): CHANGE,
    ("POST", "/api/v1/instances/{instance_id}/signals"): CHANGE,
    ("GET", "/api/v1/workers"): READ,
    ("POST", "/api/v1/schedules"): CHANGE,
    ("GET", "/api/v1/schedules"): READ,
    ("POST", "/api/v1/schedules/{name:path}/pause"): CHANGE,
    ("POST", "/api/v1/schedules/{name:path}/resume"): CHANGE,
    ("DELETE", "/api/v1/schedules/{name:path}"): CHANGE,
    ("POST", "/api/v1/schedules/fire"): CHANGE,
    ("GET", "/metrics"): ANY,
}
ROLES_WITH = {
    WORKER_API: {"worker", "operator"},
    READ: {"viewer", "operator"},
    CHANGE: {"operator"},
    ANY: {"worker", "viewer", "operator"},
}
#: Made-up values for the path's parameters: nothing has these ids.
PARAMETERS = {
    "worker_id": "5f0c1a7e-0000-4000-8000-000000000001",
    "instance_id": "5f0c1a7e-0000-4000-8000-000000000002",
    "step": "nope",
    "name": "nope",
}
#: Tokens the server must not know: no scheme, another scheme, garbage, a well-formed unknown one.
MALFORMED = [
    "flt_000000000000_" + "A" * 43,
    "Bearer",
    "Basic dXNlcjpwYXNz",
    "Bearer not-a-token",
    "Bearer flt_000000000000_" + "A" * 43,
    "Bearer " + "x" * 5000,
]
#: How long a revoke may take to reach a running server (its token snapshot's age, ~1 s).
REVOKE_WITHIN = 2.0


@dataclass
class Site:
    """The module's server, its database and a token of each role (plus a revoked one)."""

    server: ServerProcess
    database_url: str
    tokens: dict[str, str]
    revoked: str
    revoked_after: float
    http: httpx.Client


def migrated_database(postgres_server: PostgresServer) -> URL:
    url = postgres_server.create_database("fuseline_security")
    engine = create_database_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def revoke(database_url: str, name: str) -> None:
    broker = SqlBroker(database_url)
    try:
        TokenStore(broker).revoke(name)
    finally:
        broker.close()


def wait_for_status(call: callable, status: int, within: float) -> float:  # type: ignore[valid-type]
    """Repeat ``call`` until it answers ``status``; the seconds that took."""
    started = time.monotonic()
    while True:
        answered = call().status_code
        if answered == status:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"still {answered} after {within} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def site(postgres_server: PostgresServer) -> Iterator[Site]:
    url = migrated_database(postgres_server)
    text = url_text(url)
    tokens = {role: create_token(text, f"matrix-{role}", role) for role in ("worker", "viewer", "operator")}
    revoked = create_token(text, "matrix-revoked", "operator")
    server = ServerProcess(ServerSettings(text, connections=4, listen=False)).start()
    headers = {"authorization": f"Bearer {revoked}"}
    assert httpx.get(f"{server.url}/api/v1/instances", headers=headers).status_code == 200
    revoke(text, "matrix-revoked")
    took = wait_for_status(lambda: httpx.get(f"{server.url}/api/v1/instances", headers=headers), 401, 10)
    http = httpx.Client(base_url=server.url)
    try:
        yield Site(server, text, tokens, revoked, took, http)
    finally:
        http.close()
        server.kill()
        postgres_server.drop_database(url)


def flattened(routes: list[BaseRoute]) -> Iterator[tuple[str, set[str] | None, BaseRoute]]:
    """(path, methods, route) of each route, the routes of included routers too (FastAPI 0.165
    keeps an included router as one entry that expands to its routes)."""
    for route in routes:
        expand = getattr(route, "effective_route_contexts", None)
        if expand is None:
            yield getattr(route, "path", ""), getattr(route, "methods", None), route
        else:
            for context in expand():
                yield context.path, getattr(context.original_route, "methods", None), context.original_route


def enumerated_routes(database_url: str) -> set[tuple[str, str]]:
    """(method, path) of every route of the application under /api/ and /metrics."""
    app = build_app(ServerSettings(database_url, connections=1, listen=False))
    try:
        found: set[tuple[str, str]] = set()
        for path, methods, route in flattened(app.routes):
            if not (path.startswith("/api/") or path == "/metrics"):
                continue
            assert isinstance(route, APIRoute), f"{path} is not an API route: no table row can fit it"
            found |= {(method, path) for method in methods or () if method != "HEAD"}
        return found
    finally:
        app.state.fuseline.broker.close()


def call(site: Site, method: str, path: str, authorization: str | None) -> httpx.Response:
    concrete = path.replace(":path", "").format(**PARAMETERS)
    headers = {"authorization": authorization} if authorization is not None else {}
    params = {"timeout": "0"} if concrete.endswith("/work") else None
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return site.http.request(method, concrete, headers=headers, json=body, params=params)


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    error = response.json()["error"]
    assert error["type"] == "AccessDenied" and error["message"], error
    if status == 401:
        assert response.headers.get("www-authenticate") == "Bearer"


def test_every_route_has_a_row_in_the_table(site: Site) -> None:
    found = enumerated_routes(site.database_url)
    missing = sorted(found - set(RIGHTS))
    stale = sorted(set(RIGHTS) - found)
    assert not missing, f"routes with no row in RIGHTS (decide who may call them): {missing}"
    assert not stale, f"rows of RIGHTS for routes that no longer exist: {stale}"


@pytest.mark.parametrize(("method", "path"), sorted(RIGHTS), ids=[f"{m} {p}" for m, p in sorted(RIGHTS)])
def test_the_route_lets_in_exactly_the_roles_with_its_right(site: Site, method: str, path: str) -> None:
    assert_refused(call(site, method, path, None), 401)
    for authorization in MALFORMED:
        assert_refused(call(site, method, path, authorization), 401)
    real = site.tokens["operator"]
    assert_refused(call(site, method, path, f"Bearer {real[:-1]}{'B' if real[-1] != 'B' else 'C'}"), 401)
    assert_refused(call(site, method, path, f"Bearer {site.revoked}"), 401)
    allowed = ROLES_WITH[RIGHTS[method, path]]
    for role, token in site.tokens.items():
        response = call(site, method, path, f"Bearer {token}")
        if role in allowed:
            assert response.status_code not in (401, 403), (role, response.text)
            assert response.status_code < 500, (role, response.text)
        else:
            assert_refused(response, 403)
            assert role in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/healthz", "/docs", "/openapi.json"])
def test_health_and_the_api_description_need_no_token(site: Site, path: str) -> None:
    response = httpx.get(f"{site.server.url}{path}")
    assert response.status_code == 200, response.text


def test_the_api_description_lists_every_route_of_the_table(site: Site) -> None:
    described = httpx.get(f"{site.server.url}/openapi.json").json()["paths"]
    listed = {(method.upper(), path) for path, item in described.items() for method in item}
    assert {(method, path.replace(":path", "")) for method, path in RIGHTS} <= listed


def test_a_revoked_token_was_refused_within_about_a_second(site: Site) -> None:
    """The fixture used the token, revoked it, and polled until the server refused it."""
    assert site.revoked_after < REVOKE_WITHIN


def test_tokens_never_appear_in_the_server_log(site: Site, tmp_path: Path) -> None:
    """``fuseline server --log-level debug`` (access log on) sees good, bad and revoked tokens."""
    fresh = create_token(site.database_url, "matrix-logged", "operator")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("FUSELINE_SERVER", "FUSELINE_TOKEN")}
    env["FUSELINE_DATABASE_URL"] = site.database_url
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "fuseline"), "server", "--port", str(port),
             "--log-level", "debug", "--no-listen", "--connections", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        unknown = "flt_000000000000_" + "Q" * 43
        sent = [fresh, site.tokens["viewer"], site.tokens["worker"], site.revoked, unknown]
        for token in sent:
            for method, path in (("GET", "/api/v1/instances"), ("POST", "/api/v1/instances"),
                                 ("GET", "/api/v1/info"), ("GET", "/metrics")):  # fmt: skip
                httpx.request(method, f"{url}{path}", headers={"authorization": f"Bearer {token}"},
                              json={} if method == "POST" else None)  # fmt: skip
            httpx.get(f"{url}/api/v1/instances", headers={"authorization": token})
        revoke(site.database_url, "matrix-logged")
        wait_for_status(
            lambda: httpx.get(f"{url}/api/v1/info", headers={"authorization": f"Bearer {fresh}"}), 401, 5
        )
    finally:
        process.terminate()
        process.wait(15)
    text = log.read_text()
    assert "GET /api/v1/instances" in text, "the access log was not on: the check would prove nothing"
    for token in sent:
        secret = token.split("_", 2)[-1]  # after "flt" and the id: the secret may hold "_" itself
        assert len(secret) >= 40, secret
        assert secret not in text, "a token's secret is in the server's log"
    assert not re.search(r"flt_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}", text), text
