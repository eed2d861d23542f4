"""Running a statement of :mod:`fuseline.broker.sql.pg_statements` under EXPLAIN ANALYZE.

The statements are written with psycopg's ``%(name)s`` placeholders; PREPARE wants ``$n``.
A plan is checked by walking its nodes: how often each ran and how many rows it read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import pytest

from fuseline.broker.base import StepAssignment, StepReport
from fuseline.broker.sql.database import PostgresDatabase
from fuseline.states import Status
from tests.contract.support import report


def as_prepared(sql: str) -> tuple[str, list[str]]:
    """``sql`` with its ``%(name)s`` parameters numbered ``$1``..., and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), names


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def explain_analyze(dsn: str, statement: str, params: dict[str, Any], *, cache_mode: str) -> dict[str, Any]:
    """The plan (JSON, its top node) ``statement`` ran with, prepared with ``params`` under
    ``plan_cache_mode = cache_mode``; in one transaction, rolled back (EXPLAIN ANALYZE writes)."""
    prepared, names = as_prepared(statement)
    arguments = ", ".join(f"%({name})s" for name in names)
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET LOCAL plan_cache_mode = {cache_mode}")
        conn.execute(f"PREPARE checked AS {prepared}")
        # the arguments inlined as literals, which EXECUTE casts to the statement's types
        inlined = psycopg.ClientCursor(conn)
        (explained,) = inlined.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE checked({arguments})", params
        ).fetchone()
        conn.rollback()
    return (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]


def rows_read(node: dict[str, Any]) -> int:
    """The rows a plan node read over all its runs: those it returned and those its filters dropped."""
    per_run = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    per_run += node.get("Rows Removed by Join Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    return per_run * max(1, node.get("Actual Loops", 1))


class Captured(Exception):
    """Stops a broker call once the statement looked for is captured (it is not run)."""


def capture(
    monkeypatch: pytest.MonkeyPatch, statements: Iterable[str], call: Callable[[], object]
) -> tuple[str, dict[str, Any]]:
    """The first of ``statements`` the broker sends during ``call()``, with its parameters. It is
    not run, so the rows stay as they were for EXPLAIN ANALYZE to run it on."""
    wanted = set(statements)
    sent: list[tuple[str, dict[str, Any]]] = []
    run = PostgresDatabase.rows

    def rows(db: PostgresDatabase, sql: str, params: dict[str, Any]) -> Any:
        if sql not in wanted:
            return run(db, sql, params)
        sent.append((sql, params))
        raise Captured  # before the broker would do anything with the answer

    monkeypatch.setattr(PostgresDatabase, "rows", rows)
    try:
        with pytest.raises(Captured):
            call()
    finally:
        monkeypatch.undo()
    assert len(sent) == 1, "the broker did not send one of the statements looked for"
    return sent[0]


def successes(held: Sequence[StepAssignment], results: Sequence[object]) -> list[StepReport]:
    """The success reports of the steps ``held``, with these results (one each), as a
    ProcessEngine sends them (with the version: the broker's one-statement path)."""
    return [
        report(a, Status.SUCCEEDED, result, version=a.version)
        for a, result in zip(held, results, strict=True)
    ]
