"""Fixtures every suite shares: a real PostgreSQL database and SQLite files.

One PostgreSQL database is created per test session (uniquely named, dropped
at the end) and migrated to head; each test that uses it starts from empty
tables. SQLite tests get a fresh file each (a copy of one migrated per session).
"""

from __future__ import annotations

import compileall
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fuseline
from fuseline.broker import Broker
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import upgrade
from fuseline.broker.sql.models import Base
from tests.support.databases import PostgresServer, find_postgres_server

ROOT = Path(__file__).resolve().parent.parent
#: Every table the broker keeps, so that no test sees rows an earlier one left.
FUSELINE_TABLES = tuple(Base.metadata.tables)


@pytest.fixture(scope="session", autouse=True)
def _bytecode_for_subprocesses() -> None:
    """Compile fuseline, its migrations and the tests' modules once, before any test runs.

    The suite starts hundreds of ``fuseline`` processes, all with ``PYTHONDONTWRITEBYTECODE=1``
    (so the ``flows.py`` files tests write and rewrite are never cached). When nothing had
    written fuseline's bytecode (the environment sets ``PYTHONDONTWRITEBYTECODE`` too, as on
    the CI box), each of them compiled the whole package from source: some 15% of a CLI
    command's CPU. Files written later are not compiled, and a changed source is recompiled
    as usual (the cache records its mtime and size).
    """
    for folder in (Path(fuseline.__file__).resolve().parent, ROOT / "migrations", ROOT / "tests"):
        if folder.is_dir():
            compileall.compile_dir(folder, quiet=2)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = find_postgres_server()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_session_url(postgres_server: PostgresServer) -> Iterator[URL]:
    """A database of this test session, migrated to head."""
    url = postgres_server.create_database()
    engine = create_database_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def postgres_url(postgres_session_url: URL) -> URL:
    """The session database with empty fuseline tables."""
    engine = sa.create_engine(postgres_session_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE " + ", ".join(FUSELINE_TABLES) + " RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()
    return postgres_session_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fuseline.db'}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session (closed: no WAL file left beside it)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "fuseline.db"
    SqlBroker(f"sqlite:///{path}", migrate=True).close()
    assert not path.with_name(path.name + "-wal").exists(), "the template was not checkpointed"
    return path


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str, sqlite_template: Path) -> str:
    """``sqlite_url`` with its file already migrated to head: a copy of the session's template.

    The same empty tables as migrating a new file gives, without running every migration
    again for each of the hundreds of SQLite tests (some 65 ms each). Migrating a new file
    is what tests/sql/test_sql_migrations.py and the CLI's ``db`` tests check.
    """
    shutil.copyfile(sqlite_template, sqlite_url.removeprefix("sqlite:///"))
    return sqlite_url


def url_text(url: URL | str) -> str:
    """A URL as text with its password, for handing to subprocesses."""
    return url.render_as_string(hide_password=False) if isinstance(url, URL) else url


@pytest.fixture
def broker_factory_postgres(postgres_url: URL) -> Iterator[Callable[..., SqlBroker]]:
    brokers: list[SqlBroker] = []

    def make(**options: object) -> SqlBroker:
        broker = SqlBroker(postgres_url, **options)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture(scope="module")
def contract_servers(postgres_session_url: URL) -> Iterator[Any]:
    """Server processes for a module's HTTP contract runs (a fresh broker per test), gone with the
    module: they listen on the session's database, where later tests count listening sessions."""
    from tests.support.contract_servers import ContractServers

    servers = ContractServers(url_text(postgres_session_url))
    yield servers
    servers.close()


@pytest.fixture
def broker_factory_http(postgres_url: URL, contract_servers: Any) -> Iterator[Callable[..., Broker]]:
    """HttpBrokerClients on real ``fuseline server`` processes over the PostgreSQL database, each
    server with a broker built for this test, and an operator token (every right)."""
    from fuseline.clients.http import HttpBrokerClient

    token = contract_servers.start_test()
    made: list[HttpBrokerClient] = []

    def make(lease_seconds: float = 30.0, max_result_bytes: int = 1024 * 1024) -> HttpBrokerClient:
        url = contract_servers.take(lease_seconds=lease_seconds, max_result_bytes=max_result_bytes)
        made.append(HttpBrokerClient(url, token))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def broker_factory_sqlite(migrated_sqlite_url: str) -> Iterator[Callable[..., SqlBroker]]:
    brokers: list[SqlBroker] = []

    def make(**options: object) -> SqlBroker:
        broker = SqlBroker(migrated_sqlite_url, migrate=True, **options)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()
