"""Fixtures of the dashboard tests: a real server over PostgreSQL, tokens, workers, a browser.

Each test gets a fresh ``fuseline server`` process over the emptied test database, with an
operator, a viewer and a worker token. The headless Chromium is started once per module
(starting one takes about a second); each test signs in anew, since its database is new.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from fuseline import Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import Worker
from fuseline.service.server import ServerSettings
from fuseline.service.tokens import TokenStore
from tests.conftest import url_text
from tests.support.servers import ServerProcess

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


@dataclass
class Site:
    """A running server, its database and a token of each role."""

    url: str
    database_url: str
    broker: SqlBroker
    tokens: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def client(self, role: str | None = None) -> Iterator[httpx.Client]:
        """An HTTP client, signed in with the ``role``'s token unless None."""
        with httpx.Client(base_url=self.url, timeout=30, follow_redirects=False) as client:
            if role is not None:
                response = post_login(client, {"token": self.tokens[role], "next": "/instances"})
                assert response.status_code == 303, response.text
            yield client


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, "the page has no CSRF field"
    return match.group(1)


def login_csrf_of(html: str) -> str:
    match = _LOGIN_CSRF.search(html)
    assert match is not None, "the sign-in form has no pre-session field"
    return match.group(1)


def post_login(client: httpx.Client, data: dict[str, str]) -> httpx.Response:
    """Post the sign-in form as a browser does: fetch it first (its pre-session cookie and field)."""
    form = client.get("/login")
    assert form.status_code == 200, form.text
    return client.post("/login", data={"login_csrf": login_csrf_of(form.text)} | data)


@pytest.fixture
def site(postgres_url: URL) -> Iterator[Site]:
    url = url_text(postgres_url)
    broker = SqlBroker(url)
    store = TokenStore(broker)
    tokens = {role: store.create(f"dash-{role}", role) for role in ("operator", "viewer", "worker")}
    server = ServerProcess(ServerSettings(url, connections=4)).start()
    try:
        yield Site(server.url, url, broker, tokens)
    finally:
        broker.close()
        server.kill()


@contextmanager
def running_worker(database_url: str, *workflows: Workflow) -> Iterator[Worker]:
    """A worker in a thread of this process, on a broker of its own, until the block ends."""
    broker = SqlBroker(database_url)
    worker = Worker(LocalBrokerClient(broker), list(workflows))
    thread = threading.Thread(target=worker.work, kwargs={"block": True, "poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        worker.close()
        broker.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium through chromedriver (Debian's packages: ``make test`` installs them)."""
    if shutil.which(CHROMEDRIVER) is None or shutil.which(CHROMIUM) is None:
        pytest.fail(
            "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
