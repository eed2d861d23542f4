"""Item 20, least privilege: the owner migrates; a runtime role with DML only runs everything else.

On a fresh database an owner role runs ``fuseline db upgrade``, then the
documented ``docs/least-privilege.sql`` (through psql, as a user would) grants
a runtime role its privileges. The test checks that those are exactly what
the README promises, that a drain of 50 diamonds by two worker processes
passes as the runtime role, and that the runtime role cannot create, alter
or drop anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.service.tokens import Identity, Role, TokenStore
from tests.conftest import url_text
from tests.reliability import flows
from tests.reliability.support import FLOWS, REPOSITORY, PgCluster, fuseline, ok, table_names

GRANTS = REPOSITORY / "docs" / "least-privilege.sql"
DATA_TABLES = [
    "fuseline_events",
    "fuseline_instances",
    "fuseline_schedules",
    "fuseline_server_secrets",
    "fuseline_signals",
    "fuseline_starts",
    "fuseline_steps",
    "fuseline_tokens",
    "fuseline_workers",
    "fuseline_workflows",
]
DML = ["DELETE", "INSERT", "SELECT", "UPDATE"]


def _libpq(url: URL) -> str:
    """The URL as psql and psycopg take it (no SQLAlchemy driver name)."""
    return url_text(url.set(drivername="postgresql"))


def _rows(url: URL, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def roles(cluster: PgCluster) -> tuple[URL, URL, str]:
    """(owner URL, runtime URL, runtime role) on a new database owned by the owner."""
    owner = cluster.create_role("fl_owner")
    runtime = cluster.create_role("fl_runtime")
    database = cluster.create_database(owner=owner)
    return cluster.url(database, owner), cluster.url(database, runtime), runtime


def test_the_runtime_role_runs_a_drain_with_data_privileges_only(
    roles: tuple[URL, URL, str], tmp_path: Path
) -> None:
    owner_url, runtime_url, runtime = roles

    # the owner creates the tables, then grants what the documentation says
    ok(fuseline("db", "upgrade", url=owner_url, cwd=tmp_path))
    psql = shutil.which("psql")
    assert psql is not None, "psql is needed to run docs/least-privilege.sql as documented"
    granted = subprocess.run(
        [psql, "-X", "-q", "-v", f"runtime_role={runtime}", "-f", str(GRANTS), _libpq(owner_url)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert granted.returncode == 0, granted.stdout + granted.stderr

    # exactly the documented privileges
    table_grants = _rows(
        owner_url,
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = %s ORDER BY 1, 2",
        runtime,
    )
    expected = [(t, p) for t in DATA_TABLES for p in DML] + [("fuseline_alembic_version", "SELECT")]
    assert sorted(table_grants) == sorted(expected)
    (privileges,) = _rows(
        owner_url,
        "SELECT has_schema_privilege(%s, 'public', 'USAGE'), has_schema_privilege(%s, 'public', 'CREATE'),"
        " has_database_privilege(%s, current_database(), 'CONNECT'),"
        " has_database_privilege(%s, current_database(), 'CREATE'),"
        " has_database_privilege(%s, current_database(), 'TEMPORARY'),"
        " has_sequence_privilege(%s, 'fuseline_steps_id_seq', 'USAGE'),"
        " has_sequence_privilege(%s, 'fuseline_events_id_seq', 'USAGE'),"
        " has_sequence_privilege(%s, 'fuseline_steps_id_seq', 'UPDATE'),"
        " (SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolbypassrls FROM pg_roles WHERE rolname = %s)",
        *[runtime] * 9,
    )
    assert privileges == (True, False, True, False, False, True, True, False, False)

    # a drain as the runtime role: 50 diamonds dispatched through the API, two worker processes
    broker = SqlBroker(runtime_url)
    try:
        ids = broker.dispatch_many(flows.diamond.to_schema(), [{"x": x} for x in range(50)])
    finally:
        broker.close()
    ok(
        fuseline(
            "worker", "run", f"{FLOWS}:diamond", "--burst", "--concurrency", "2", "--poll-interval", "0.05",
            url=runtime_url,
            timeout=120,
        )
    )  # fmt: skip
    verified = ok(fuseline("db", "verify", url=runtime_url, cwd=tmp_path))
    assert "every invariant holds" in verified.stdout
    broker = SqlBroker(runtime_url)
    try:
        for x, instance_id in enumerate(ids):
            info = broker.get_instance(instance_id)
            assert info.status is Status.SUCCEEDED and info.result == 2 * x + x + 1, info
        workers = broker.list_workers()
    finally:
        broker.close()
    assert len(workers) == 2 and all(w.stopped_at is not None for w in workers)

    # ... and a server running as it verifies tokens and keeps its session secret
    broker = SqlBroker(runtime_url)
    try:
        token = TokenStore(broker).create("ci", Role.OPERATOR)
        assert TokenStore(broker).verify(token) == Identity("ci", Role.OPERATOR)
        assert TokenStore(broker).session_secret() == TokenStore(broker).session_secret()
    finally:
        broker.close()

    # ... and it cannot change the schema
    tables = table_names(owner_url)
    refused = {
        "create a table": "CREATE TABLE fuseline_mine (id integer)",
        "create a schema": "CREATE SCHEMA mine",
        "create a temporary table": "CREATE TEMPORARY TABLE mine (id integer)",
        "create an index": "CREATE INDEX ix_mine ON fuseline_steps (name)",
        "alter a table": "ALTER TABLE fuseline_steps ADD COLUMN mine integer",
        "rename a table": "ALTER TABLE fuseline_events RENAME TO mine",
        "drop a table": "DROP TABLE fuseline_events",
        "truncate a table": "TRUNCATE fuseline_events",
        "change the version": "UPDATE fuseline_alembic_version SET version_num = 'ffff'",
        "create an extension": "CREATE EXTENSION IF NOT EXISTS pgcrypto",
    }
    with psycopg.connect(_libpq(runtime_url), autocommit=True) as conn:
        for what, sql in refused.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
                pytest.fail(f"the runtime role could {what}")
    assert table_names(owner_url) == tables


#: Anything that would need CREATE EXTENSION (or a superuser) at run time.
EXTENSION = re.compile(r"create\s+extension|create_extension|\bpgcrypto\b|uuid-ossp|uuid_generate_v", re.I)


def test_fuseline_never_creates_an_extension() -> None:
    assert EXTENSION.search('op.execute("CREATE  EXTENSION IF NOT EXISTS pgcrypto")')  # the check works
    sources = [*(REPOSITORY / "fuseline").rglob("*.py"), *(REPOSITORY / "migrations").rglob("*.py")]
    assert len(sources) > 30
    found = [str(path) for path in sources if EXTENSION.search(path.read_text())]
    assert found == []
