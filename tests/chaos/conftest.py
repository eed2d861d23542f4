"""Fixtures of the chaos tests: fresh databases with the ledger table, and a server the tests own.

``chaos_postgres`` is a new database on the shared test server (migrated,
with ``chaos_ledger``), dropped afterwards; ``chaos_sqlite`` the same as a
SQLite file. ``own_server`` is an embedded PostgreSQL server of this
session that tests may restart (see :mod:`tests.chaos.server`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import upgrade
from tests.chaos.history import create_ledger
from tests.chaos.scale import summary_table
from tests.chaos.server import OwnServer
from tests.conftest import url_text
from tests.support.databases import PostgresServer

#: Connections the owned server accepts (32 claimers with their own pools, workers, the test).
OWN_SERVER_MAX_CONNECTIONS = 300


@dataclass
class ChaosDatabase:
    """A migrated database with the ledger table: its URL text (for workers) and an engine (for the test)."""

    url: str
    engine: Engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


def _test_engine(url: URL | str) -> Engine:
    """The test's own engine: on PostgreSQL named ``chaos-test`` (never taken for a fuseline
    session); on SQLite fuseline's engine, whose connections know the database clock."""
    if isinstance(url, URL) or not str(url).startswith("sqlite"):
        return sa.create_engine(url, connect_args={"application_name": "chaos-test"}, pool_pre_ping=True)
    return create_database_engine(url)


def migrated_postgres(server: PostgresServer | OwnServer) -> URL:
    url = server.create_database("fuseline_chaos")
    engine = _test_engine(url)
    try:
        upgrade(engine)
        create_ledger(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def chaos_postgres(postgres_server: PostgresServer) -> Iterator[ChaosDatabase]:
    url = migrated_postgres(postgres_server)
    engine = _test_engine(url)
    try:
        yield ChaosDatabase(url_text(url), engine)
    finally:
        engine.dispose()
        postgres_server.drop_database(url)


@pytest.fixture
def chaos_sqlite(tmp_path: Path) -> Iterator[ChaosDatabase]:
    url = f"sqlite:///{tmp_path / 'chaos.db'}"
    SqlBroker(url, migrate=True).close()
    engine = _test_engine(url)
    create_ledger(engine)
    try:
        yield ChaosDatabase(url, engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def own_server() -> Iterator[OwnServer]:
    try:
        server = OwnServer.start_new(max_connections=OWN_SERVER_MAX_CONNECTIONS)
    except Exception as exc:  # the suite must say why, never skip
        pytest.fail(f"cannot start an embedded PostgreSQL server for the chaos tests: {exc}", pytrace=False)
    yield server
    server.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """All the chaos tests' numbers of this session in one table (``make chaos`` prints it)."""
    rows = summary_table()
    if rows:
        terminalreporter.section("chaos figures")
        for row in rows:
            terminalreporter.write_line(row)
