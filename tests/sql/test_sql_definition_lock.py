"""A dispatch does not lock its workflow's definition, and verify finds instances without one.

Instances had a foreign key to their definition (``fuseline_workflows``): its check locked
the definition's row (KEY SHARE) at every dispatch, so processes dispatching one workflow at
once made a MultiXact per instance between them (7,800 for 8,000 instances from 4 processes).
The key is gone (migration 0011). Here a transaction holds the definition's row locked
exclusively while instances are dispatched, by the one-statement path and the general one:
with the key, each dispatch waited for that transaction. And since nothing stops a definition
being deleted by hand now, ``db verify`` names the instances left without one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline.broker import Dispatch
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.models import workflows
from fuseline.broker.sql.verify import verify
from fuseline.states import Status
from tests.contract.support import report
from tests.sql.workflows import one_step

#: Seconds a dispatch may take while the definition is locked; with the key it waited until
#: the lock was released, at the end of the test.
QUICK = 10.0

single = one_step("definition-lock")


@pytest.fixture
def locked_definition(postgres_url: URL) -> Iterator[SqlBroker]:
    """A broker whose workflow is stored, and its definition's row locked FOR UPDATE by
    another transaction while the test runs."""
    broker = SqlBroker(postgres_url)
    schema = single.to_schema()
    broker.register_workflows([schema])
    broker.dispatch_workflow(schema, {})  # the plan is cached: the next dispatch is one statement
    locked, release = threading.Event(), threading.Event()
    engine = sa.create_engine(postgres_url)

    def hold() -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.select(workflows.c.version)
                .where(workflows.c.workflow_id == schema.workflow_id)
                .with_for_update()
            )
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        yield broker
    finally:
        release.set()
        holder.join()
        engine.dispose()
        broker.close()


def finishes_while_locked(call: Callable[[], object]) -> bool:
    """Whether ``call()`` returns within QUICK seconds (it runs on a thread of its own)."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return done.wait(QUICK)


def test_a_one_statement_dispatch_does_not_wait_for_its_definitions_row(locked_definition: SqlBroker) -> None:
    schema = single.to_schema()
    assert finishes_while_locked(lambda: locked_definition.dispatch_workflow(schema, {}))


def test_a_general_path_dispatch_does_not_wait_for_its_definitions_row(locked_definition: SqlBroker) -> None:
    schema = single.to_schema()
    # a keyed dispatch takes the general path (one transaction of Core statements)
    assert finishes_while_locked(lambda: locked_definition.dispatch_many(schema, [Dispatch({}, key="k-1")]))


def test_verify_names_the_instances_of_a_definition_deleted_by_hand(db_url: str) -> None:
    broker = SqlBroker(db_url)
    try:
        schema = single.to_schema()
        broker.dispatch_workflow(schema, {})
        broker.dispatch_workflow(schema, {})
        worker = broker.register_worker([schema])
        (held,) = broker.get_steps(worker, 1)
        broker.report_step(worker, report(held, Status.FAILED, error="boom", version=held.version))
        assert verify(broker.engine) == []  # one RUNNING instance, one FAILED
        with broker.engine.begin() as conn:
            conn.execute(sa.delete(workflows).where(workflows.c.workflow_id == schema.workflow_id))
    finally:
        broker.close()
    checked = create_database_engine(db_url)
    try:
        found = verify(checked)
    finally:
        checked.dispose()
    assert [v.kind for v in found] == ["instance_without_definition"]
    assert "2 instance(s) of 'definition-lock' version '1'" in str(found[0])
