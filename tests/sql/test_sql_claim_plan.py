"""The claim reads the partial index of QUEUED steps, however many finished steps pile up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline.broker.sql import SqlBroker, pg_statements
from fuseline.broker.sql.queries import claims
from tests.sql.workflows import diamond

FINISHED_STEPS = 20_000
QUEUED_INDEX = "ix_fuseline_steps_queued"


@pytest.fixture
def broker(postgres_url: URL) -> Iterator[SqlBroker]:
    opened = SqlBroker(postgres_url)
    yield opened
    opened.close()


def plan_of(conn: sa.Connection, statement: str, params: dict[str, object]) -> str:
    rows = conn.exec_driver_sql("EXPLAIN " + statement, params).scalars().all()
    return "\n".join(rows)


def test_claim_uses_the_partial_queued_index_with_many_finished_steps(
    broker: SqlBroker, tmp_path: Path
) -> None:
    schema = diamond.to_schema()
    key = {"workflow_id": schema.workflow_id, "version": schema.version}
    inputs = [{"log": str(tmp_path / "ledger"), "n": n} for n in range(5)]
    (history_id,) = broker.dispatch_many(schema, inputs[:1])
    broker.dispatch_many(schema, inputs[1:])  # their roots are the few QUEUED steps
    with broker.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO fuseline_steps (instance_id, workflow_id, version, name, state, attempt, "
                "max_attempts, result, finished_at) "
                "SELECT :instance_id, :workflow_id, :version, 'done_' || g, 'SUCCEEDED', 1, 3, '1', now() "
                "FROM generate_series(1, :n) AS g"
            ),
            {"instance_id": history_id, "n": FINISHED_STEPS, **key},
        )
    with broker.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE fuseline_steps")
        counts = dict(
            conn.execute(sa.text("SELECT state, count(*) FROM fuseline_steps GROUP BY state")).all()
        )
        assert counts["SUCCEEDED"] == FINISHED_STEPS
        assert counts["QUEUED"] == 5

        candidate = plan_of(
            conn,
            "SELECT id FROM fuseline_steps WHERE state = 'QUEUED' AND workflow_id = %(workflow_id)s "
            "AND version = %(version)s AND queue = 'default' AND available_at <= clock_timestamp() "
            "ORDER BY urgency, available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
            key,
        )
        assert QUEUED_INDEX in candidate, candidate
        assert "Seq Scan on fuseline_steps" not in candidate, candidate

        # the statements the broker runs: the general path's candidates, as SQLAlchemy compiles
        # them for psycopg, and PostgreSQL's one-statement claim
        queue_key = (schema.workflow_id, schema.version, "default")
        candidates = claims.for_dialect("postgresql").candidates([queue_key])
        compiled = candidates.compile(dialect=broker.engine.dialect)
        params = compiled.construct_params(claims.ClaimQueries.candidate_params([queue_key], 16))
        general = plan_of(conn, str(compiled), params)
        assert QUEUED_INDEX in general, general
        assert "Seq Scan on fuseline_steps" not in general, general
        one = {
            "p_workflow_id": schema.workflow_id,
            "p_version": schema.version,
            "p_queue": "default",
            "p_floor": None,
            "p_worker_id": "00000000-0000-0000-0000-000000000000",
            "p_lease_seconds": 30.0,
            "p_dead_after": 60.0,
            "p_seen_every": 10.0,
        }
        claim = plan_of(conn, pg_statements.step_claim_one_workflow, one)
        assert QUEUED_INDEX in claim, claim  # (its results subquery reads one instance's steps)

    worker = broker.register_worker([schema])
    claimed = broker.get_step(worker)
    assert claimed is not None and (claimed.step_name, claimed.attempt) == ("a", 1)
