"""Fixtures of the reliability tests: a migrated database of either dialect, and throwaway roles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import url_text
from tests.reliability.support import PgCluster, pg_cluster
from tests.support.databases import PostgresServer


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database with empty fuseline tables, as URL text (password included)."""
    if request.param == "postgres":
        return url_text(request.getfixturevalue("postgres_url"))
    url: str = request.getfixturevalue("migrated_sqlite_url")
    return url


@pytest.fixture
def cluster(postgres_server: PostgresServer) -> Iterator[PgCluster]:
    """Create roles and databases on the test server; every one is dropped after the test."""
    with pg_cluster(postgres_server.admin_url) as created:
        yield created
