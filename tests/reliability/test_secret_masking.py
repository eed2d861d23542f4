"""Item 19, secret masking: the password ``S3cr3t-p%40ss`` (``S3cr3t-p@ss``) never shows.

Not in any CLI command's output (every command, on a working database and on
a refused connection, error paths included), not in a worker's DEBUG log,
not in ``repr(broker)``, ``broker.url`` or the text of any error SqlBroker
raises for a bad URL or a refused connection. The password is percent-encoded
in the URL on purpose (sqlalchemy#10738: rendering mis-escapes ``%``).

The role is real (created with that password on the test server); the server
trusts local connections, so the password is accepted either way, which is
all these output checks need.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.errors import DatabaseError
from tests.conftest import url_text
from tests.reliability import flows
from tests.reliability.support import (
    FLOWS,
    SECRET,
    SECRET_IN_URL,
    PgCluster,
    fuseline,
    in_parallel,
    subprocess_env,
)

UNKNOWN_ID = "0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21"


@pytest.fixture
def secret_url(cluster: PgCluster) -> str:
    """A database owned by a role whose password is ``S3cr3t-p@ss``, reached with it in the URL."""
    role = cluster.create_role("fl_secret", password=SECRET)
    url = url_text(cluster.url(cluster.create_database(owner=role), role, SECRET))
    assert SECRET_IN_URL in url
    return url


def _clean(*texts: str) -> bool:
    return all(SECRET not in text and SECRET_IN_URL not in text for text in texts)


#: tests/cli/test_cli_errors.py already runs these with a password in the URL, on a refused
#: connection (db upgrade/current, submit --wait, worker run --burst, instances list/show,
#: workers list) and on a working database (db upgrade/current, submit, worker run at INFO,
#: instances list, workers list --all). Here: every other command, both ways, error paths,
#: the worker at DEBUG, and a traceback (FUSELINE_DEBUG=1).
REFUSED_HERE = [
    ("db", "downgrade", "base"),
    ("db", "verify"),
    ("instances", "cancel", UNKNOWN_ID),
    ("instances", "retry", UNKNOWN_ID),
    ("worker", "run", f"{FLOWS}:diamond", "--burst", "--log-level", "DEBUG"),
]


def test_no_cli_command_shows_the_password(secret_url: str, tmp_path: Path) -> None:
    good = secret_url
    refused = good.replace("@127.0.0.1:5432/", "@127.0.0.1:1/")
    assert refused != good
    runs: list[tuple[tuple[str, ...], dict[str, str], Any]] = []

    def run(*args: str, url: str = good, **env: str) -> Any:
        proc = fuseline(*args, url=url, cwd=tmp_path, env=subprocess_env(**env))
        runs.append((args, env, proc))
        return proc

    broker = SqlBroker(secret_url, migrate=True)
    try:
        first, second = broker.dispatch_many(flows.diamond.to_schema(), [{"x": 1}, {"x": 2}])
    finally:
        broker.close()
    in_parallel(
        [lambda c=c: run(*c, url=refused) for c in REFUSED_HERE]
        + [
            lambda: run("instances", "list", url=refused, FUSELINE_DEBUG="1"),
            lambda: run("db", "history"),
            lambda: run("db", "verify"),
            lambda: run("instances", "show", UNKNOWN_ID),  # unknown: exit 1
            lambda: run("instances", "cancel", second),
        ],
        workers=5,
    )
    run("instances", "retry", second)
    worker = run("worker", "run", f"{FLOWS}:diamond", "--burst", "--log-level", "DEBUG")
    assert worker.returncode == 0, worker.stderr
    assert "DEBUG [pid" in worker.stderr and "top of a diamond got x=" in worker.stderr, worker.stderr
    assert "***@" in worker.stderr, "the worker's start line should name the masked URL"
    in_parallel(
        [
            lambda: run("instances", "show", first, "--json"),
            lambda: run("instances", "cancel", first),  # finished: exit 1
        ]
    )
    run("db", "downgrade", "base")  # after the two above: they read the tables it drops
    run("instances", "list")  # no tables: exit 1

    failed = [args for args, _, proc in runs if proc.returncode != 0]
    expected_to_fail = {
        *REFUSED_HERE,
        ("instances", "list"),  # refused first, then on the downgraded database
        ("instances", "show", UNKNOWN_ID),
        ("instances", "cancel", first),
    }
    unexpected = [(args, proc.stdout[-500:], proc.stderr[-500:]) for args, _, proc in runs
                  if proc.returncode != 0 and args not in expected_to_fail]  # fmt: skip
    assert len(runs) == 16 and not unexpected, unexpected
    assert len(failed) == 9, failed
    for args, env, proc in runs:
        assert _clean(proc.stdout, proc.stderr), (args, proc.stdout, proc.stderr)
        if not env:  # FUSELINE_DEBUG=1 may show a traceback (checked above); nothing else does
            assert "Traceback" not in proc.stderr, (args, proc.stderr)


def _all_text(exc: BaseException) -> str:
    """What a user or a log could show of an error: str, repr, the traceback, and the chain."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), "".join(traceback.format_exception(seen))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def test_the_broker_hides_the_password_everywhere(
    secret_url: str, caplog: pytest.LogCaptureFixture, sqlite_url: str
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger ...
    # ... and SQLAlchemy's, which stays quiet unless configured: statements and their
    # parameters (INFO, what echo=True shows), connections (the pool's DEBUG). Echo stays off.
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.pool")
    broker = SqlBroker(secret_url, migrate=True)
    try:
        assert _clean(repr(broker), broker.url, repr(broker.engine), str(broker.engine.url))
        assert "***" in repr(broker) and "***" in broker.url
        assert broker.engine.hide_parameters
        assert not broker.engine.echo
        schema = flows.diamond.to_schema()
        worker = broker.register_worker([schema])
        instance_id = broker.dispatch_workflow(schema, {"password": SECRET, "x": 1})
        assert broker.get_step(worker) is not None
        info = broker.get_instance(instance_id)
        assert info.status is Status.RUNNING
    finally:
        broker.close()
    sqlite = SqlBroker(sqlite_url, migrate=True)
    try:
        assert sqlite.engine.hide_parameters
    finally:
        sqlite.close()
    assert create_database_engine(secret_url).hide_parameters

    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "sqlalchemy.engine" in logged, "SQLAlchemy did not log at DEBUG: the check proves nothing"
    assert "parameters hidden" in logged
    assert _clean(logged), "the password (an input value here) reached a log"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://u:{SECRET_IN_URL}@127.0.0.1:1/db",  # refused connection
        f"mysql://u:{SECRET_IN_URL}@127.0.0.1/db",  # unsupported scheme
        f"postgresql+asyncpg://u:{SECRET_IN_URL}@127.0.0.1/db",  # another driver
        f"u:{SECRET_IN_URL}@127.0.0.1/db",  # not a URL
        f"postgresql+psycopg://u:{SECRET_IN_URL}@127.0.0.1:port/db",  # a bad port
        f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db",  # the raw "@" mistake
        f"postgresql+psycopg://127.0.0.1:1/db?user=u&password={SECRET_IN_URL}",  # as a parameter
        URL.create("postgresql+psycopg", "u", SECRET, "127.0.0.1", 1, "db"),  # a URL object
    ],
    ids=["refused", "scheme", "driver", "not-a-url", "bad-port", "raw-at", "query", "url-object"],
)
def test_errors_for_bad_urls_never_carry_the_password(url: str | URL) -> None:
    with pytest.raises(DatabaseError) as refused:
        SqlBroker(url)
    text = _all_text(refused.value)
    assert _clean(text), text


def test_errors_from_a_server_that_refuses_the_login_never_carry_the_password(
    postgres_server: Any,
) -> None:
    url = postgres_server.admin_url.set(username="no_such_role_y", password=SECRET)
    with pytest.raises(DatabaseError, match='role "no_such_role_y" does not exist') as refused:
        SqlBroker(url)
    assert _clean(_all_text(refused.value))
