"""The array literals a dispatch sends for its plan's steps read back as the values they hold."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy.engine import URL

from fuseline.broker.sql.dispatching import array_literal
from tests.conftest import url_text


@pytest.fixture
def conn(postgres_url: URL) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url_text(postgres_url.set(drivername="postgresql"))) as connection:
        yield connection


@pytest.mark.parametrize(
    ("values", "sql_type"),
    [
        (["load", "a b", 'say "hi"', "back\\slash", "{braces}", "comma,here", "NULL", "", "é ü"], "text[]"),
        ([True, False, None], "boolean[]"),
        ([3, None, -1, 0], "integer[]"),
        ([0.1, None, 2.5, 1e-07, float("inf")], "float8[]"),
        ([], "text[]"),
    ],
)
def test_array_literal_reads_back_equal(conn: psycopg.Connection, values: list, sql_type: str) -> None:
    (read,) = conn.execute(f"SELECT CAST(%s AS {sql_type})", [array_literal(values)]).fetchone()
    assert read == values


def test_times_are_sent_as_iso_text_and_keep_their_instant(conn: psycopg.Connection) -> None:
    """A dispatch's ``at`` (always timezone-aware) goes as ISO text, whatever the session's zone."""
    oslo = timezone(timedelta(hours=1))
    times = [
        datetime(2026, 12, 4, 7, 30, 0, 123456, tzinfo=oslo),
        None,
        datetime(2027, 1, 1, tzinfo=timezone.utc),
    ]
    conn.execute("SET TIME ZONE 'America/New_York'")
    literal = array_literal([t.isoformat() if t is not None else None for t in times])
    (read,) = conn.execute("SELECT CAST(%s AS timestamptz[])", [literal]).fetchone()
    assert read == times
