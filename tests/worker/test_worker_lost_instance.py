"""A worker whose instance disappears under it (lost with a primary that failed over with
asynchronous replication, or deleted by hand) drops that result and goes on.

Before, the broker's ``UnknownInstance`` for the report stopped the worker (exit 1 from
``fuseline worker run``), so one lost instance took a worker down with it.
"""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy as sa

from fuseline import Computed, Depends, Status, Step, Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import events, instances, steps
from fuseline.clients import LocalBrokerClient
from fuseline.engines import Worker

GATE = threading.Event()
STARTED = threading.Event()


class Held(Step):
    """Waits for the test: the instance is deleted while this step runs."""

    def run_step(self, n: int) -> int:
        STARTED.set()
        GATE.wait(10)
        return n


class Other(Step):
    def run_step(self, n: int) -> int:
        return n


held, other = Held(), Other()


class Join(Step):
    """Waits for both: ``held`` feeds a join, so its report takes the general path."""

    def run_step(self, a: Computed[int] = Depends(held), b: Computed[int] = Depends(other)) -> int:
        return a + b


JOINED = Workflow([Join()], workflow_id="lost-instance-join", version="1")


@pytest.mark.parametrize("database", ["postgres_url", "migrated_sqlite_url"])
def test_a_report_for_an_instance_deleted_meanwhile_is_dropped_and_the_worker_goes_on(
    database: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    GATE.clear()
    STARTED.clear()
    url = str(request.getfixturevalue(database))
    broker = SqlBroker(url)
    worker = Worker(LocalBrokerClient(broker), [JOINED])
    try:
        lost = JOINED.dispatch(broker, {"n": 1})
        kept = JOINED.dispatch(broker, {"n": 2})
        ran: list[int] = []
        failure: list[BaseException] = []

        def drain() -> None:
            try:
                ran.append(worker.work())
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=drain)
        with caplog.at_level(logging.WARNING, logger="fuseline.worker"):
            thread.start()
            assert STARTED.wait(10), "the first step never started"
            held_now = broker.get_instance(lost).steps
            assert any(s.name == "held" and s.state is Status.RUNNING for s in held_now)
            engine = sa.create_engine(url)
            try:
                with engine.begin() as conn:  # typed deletes: SQLite keeps UUIDs as hex
                    conn.execute(sa.delete(events).where(events.c.instance_id == lost))
                    conn.execute(sa.delete(steps).where(steps.c.instance_id == lost))
                    conn.execute(sa.delete(instances).where(instances.c.id == lost))
                assert broker.has_running_instances(), "the kept instance runs on"
            finally:
                engine.dispose()
            GATE.set()
            thread.join(30)
        assert not thread.is_alive(), "the worker never finished its drain"
        assert not failure, f"the worker stopped: {failure[0]!r}"
        assert broker.get_instance(kept).status is Status.SUCCEEDED
        assert broker.get_instance(kept).result == 2 + 2
        dropped = [r.getMessage() for r in caplog.records if "unknown instance" in r.getMessage()]
        assert dropped, [r.getMessage() for r in caplog.records]
    finally:
        GATE.set()
        worker.close()
        broker.close()
