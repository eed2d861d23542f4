"""A report and the claim sent right after it commit separately: the report stays durable.

Claims commit without waiting for the WAL flush (``synchronous_commit =
off``, safe because a lost claim only runs a step again). A report must not
share that transaction: on the worker's hot path (``report_and_claim``,
one report then the next claim) the two used to run in one pipelined
transaction, so the report committed without waiting for the flush either,
and a database crash could lose a report the worker had been told was
accepted. Each row version's ``xmin`` names the transaction that wrote it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.states import Status
from tests.contract import workflows as wf


def writers(url: URL, instance_id: str) -> dict[str, int]:
    """step name -> the transaction id that wrote its current row version."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT name, xmin::text::bigint FROM fuseline_steps WHERE instance_id = %(i)s",
                {"i": instance_id},
            ).all()
        return dict(rows)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def test_a_report_and_the_claim_after_it_are_two_transactions(postgres_url: URL) -> None:
    broker = SqlBroker(postgres_url)
    try:
        schema = wf.SEQUENCE.to_schema()
        broker.register_workflows([schema])
        worker = broker.register_worker([schema])
        instance_id = wf.SEQUENCE.dispatch(broker, {"x": 3})
        first = broker.get_step(worker)
        assert first is not None
        report = StepReport(
            first.workflow_id, instance_id, "first", Status.SUCCEEDED, 3, attempt=1, version=first.version
        )

        following = broker.report_and_claim(worker, report)

        assert following is not None and following.step_name == "second"
        written = writers(postgres_url, instance_id)
        assert written["first"] != written["second"], "the report committed in the claim's transaction"
    finally:
        broker.close()
