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
from sqlalchemy.engine import URL

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
    """The plan (JSON, its top node, with buffer counts) ``statement`` ran with, prepared with
    ``params`` under ``plan_cache_mode = cache_mode``; in one transaction, rolled back (EXPLAIN
    ANALYZE writes)."""
    prepared, names = as_prepared(statement)
    arguments = ", ".join(f"%({name})s" for name in names)
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET LOCAL plan_cache_mode = {cache_mode}")
        conn.execute(f"PREPARE checked AS {prepared}")
        # the arguments inlined as literals, which EXECUTE casts to the statement's types
        inlined = psycopg.ClientCursor(conn)
        (explained,) = inlined.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE checked({arguments})", params
        ).fetchone()
        conn.rollback()
    return (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]


def rows_read(node: dict[str, Any]) -> int:
    """The rows a plan node read over all its runs: those it returned and those its filters dropped."""
    per_run = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    per_run += node.get("Rows Removed by Join Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    return per_run * max(1, node.get("Actual Loops", 1))


def pages_per_run(node: dict[str, Any]) -> float:
    """The pages a scan touched per run, not counting the nodes below it (EXPLAIN counts theirs
    in): an index read whole to find one entry shows here, where its rows do not (a condition
    on an index's later column is checked inside the index, not counted as rows removed)."""

    def pages(of: dict[str, Any]) -> int:
        return of.get("Shared Hit Blocks", 0) + of.get("Shared Read Blocks", 0)

    own = pages(node) - sum(pages(child) for child in node.get("Plans", []))
    return own / max(1, node.get("Actual Loops", 1))


def table_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes of ``plan`` that read a table or an index (not the statement's own rows)."""
    return [node for node in nodes(plan) if "Relation Name" in node]


def assert_reads_at_most(plan: dict[str, Any], most: int) -> None:
    """No scan of a table in ``plan`` reads more than ``most`` rows (joins of the statement's own
    rows with each other are not counted: they read no table)."""
    busiest = max(table_scans(plan), key=rows_read)
    assert rows_read(busiest) <= most, (
        f"{busiest['Node Type']} on {busiest.get('Index Name') or busiest.get('Relation Name')} read "
        f"{rows_read(busiest)} rows (at most {most}): " + json.dumps(busiest)[:400]
    )


def assert_touches_at_most(plan: dict[str, Any], pages: int) -> None:
    """No scan of a table in ``plan`` touches more than ``pages`` pages per run (its writes, the
    index entries an update adds, are not counted)."""
    busiest = max((node for node in table_scans(plan) if "Scan" in node["Node Type"]), key=pages_per_run)
    assert pages_per_run(busiest) <= pages, (
        f"{busiest['Node Type']} on {busiest.get('Index Name') or busiest.get('Relation Name')} touched "
        f"{pages_per_run(busiest):.0f} pages per run (at most {pages}): " + json.dumps(busiest)[:400]
    )


def dsn(url: URL) -> str:
    """A libpq connection string for ``url`` (psycopg, not SQLAlchemy)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Captured(Exception):
    """Stops a broker call once the statement looked for is captured (it is not run)."""


def capture(
    monkeypatch: pytest.MonkeyPatch, statements: Iterable[str], call: Callable[[], object]
) -> tuple[str, dict[str, Any]]:
    """The first of ``statements`` the broker sends during ``call()``, alone or in a pipeline,
    with its parameters. It is not run (nor the pipeline it is in), so the rows stay as they
    were for EXPLAIN ANALYZE to run it on."""
    wanted = set(statements)
    sent: list[tuple[str, dict[str, Any]]] = []
    run, run_together = PostgresDatabase.rows, PostgresDatabase.together

    def rows(db: PostgresDatabase, sql: str, params: dict[str, Any]) -> Any:
        if sql not in wanted:
            return run(db, sql, params)
        sent.append((sql, params))
        raise Captured  # before the broker would do anything with the answer

    def together(db: PostgresDatabase, pipeline: Sequence[tuple[str, dict[str, Any]]]) -> Any:
        sent.extend((sql, params) for sql, params in pipeline if sql in wanted)
        if not sent:
            return run_together(db, pipeline)
        raise Captured

    monkeypatch.setattr(PostgresDatabase, "rows", rows)
    monkeypatch.setattr(PostgresDatabase, "together", together)
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
