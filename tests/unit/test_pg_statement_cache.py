"""The one-statement forms stay short enough for psycopg to cache their parsing.

psycopg converts a query's ``%(name)s`` placeholders with a regular expression
and caches the result only for queries up to ``MAX_CACHED_STATEMENT_LENGTH``
bytes with at most ``MAX_CACHED_STATEMENT_PARAMS`` parameters. A hot-path
statement past either bound is parsed again at every execution: that cost the
worker 0.4 ms of CPU per step, a quarter of its throughput at 4 workers.
"""

from __future__ import annotations

import re

import pytest
from psycopg import _queries

from fuseline.broker.sql import pg_statements

STATEMENTS = {
    name: value
    for name, value in vars(pg_statements).items()
    if not name.startswith("_") and isinstance(value, str) and "SELECT" in value
}


def test_every_public_statement_is_found() -> None:
    assert {"step_claim_one_workflow", "step_claim_after_report", "steps_succeed_batch"} <= set(STATEMENTS)


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_statement_is_within_psycopgs_parse_cache(name: str) -> None:
    statement = STATEMENTS[name]
    assert len(statement.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH, len(statement.encode())
    placeholders = set(re.findall(r"%\((\w+)\)s", statement))
    assert len(placeholders) <= _queries.MAX_CACHED_STATEMENT_PARAMS


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_statement_keeps_no_comment_that_would_swallow_the_rest(name: str) -> None:
    """Compacting joins lines: a ``--`` comment left in would comment out everything after it."""
    assert "--" not in STATEMENTS[name]
