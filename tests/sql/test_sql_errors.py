"""Only database errors become DatabaseError; what they interrupt is given back.

- A bug in code that runs SQL (here: parameters of the wrong type handed to a
  one-statement operation) surfaces as itself. Translating it into a
  DatabaseError, or worse DatabaseUnavailable, turned programming errors into
  workers that retry forever.
- ``report_and_claim``: when the report is a replay whose claim took a step,
  and explaining the report then fails on the database, the step is given
  back at once (it used to be given back only on a BrokerError, and waited
  for its lease to expire otherwise).
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from fuseline import StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.errors import DatabaseUnavailable
from fuseline.states import Status
from tests.contract import workflows as wf


def test_a_bug_in_a_one_statement_operation_is_not_a_database_error(postgres_url: URL) -> None:
    broker = SqlBroker(postgres_url)
    try:
        with pytest.raises(TypeError):
            broker.db.rows("SELECT 1", 5)  # type: ignore[attr-defined, arg-type]
    finally:
        broker.close()


def test_a_claim_taken_with_a_replayed_report_is_given_back_when_the_database_fails(
    postgres_url: URL, monkeypatch
) -> None:
    broker = SqlBroker(postgres_url)
    try:
        schema = wf.SEQUENCE.to_schema()
        broker.register_workflows([schema])
        worker = broker.register_worker([schema])
        replayed = wf.SEQUENCE.dispatch(broker, {"x": 1})
        held = broker.get_step(worker)
        assert held is not None and held.instance_id == replayed
        report = StepReport(
            held.workflow_id, replayed, "first", Status.SUCCEEDED, 1, attempt=1, version=held.version
        )
        taken = broker.report_and_claim(worker, report)
        assert taken is not None and (taken.instance_id, taken.step_name) == (replayed, "second")
        other = wf.SEQUENCE.dispatch(broker, {"x": 2})

        def unavailable(prepared: object) -> None:
            raise DatabaseUnavailable("the connection dropped while explaining the report")

        monkeypatch.setattr(broker._reporter, "general", unavailable)
        with pytest.raises(DatabaseUnavailable):
            broker.report_and_claim(worker, report)  # the worker resends after a dropped reply

        step = broker.get_instance(other).step("first")
        assert (step.state, step.worker_id, step.attempt) == (Status.QUEUED, None, 0)
    finally:
        broker.close()
