"""Row locks on PostgreSQL: the reaper against a report (RELIABILITY item 3), and lock order.

Each test interleaves two connections step by step (threads, events, and
waiting until PostgreSQL shows a backend blocked on a lock), so the order is
the one under test every time rather than by luck.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import Status, StepReport
from fuseline.broker.base import StepAssignment
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.queries import events, leases
from fuseline.errors import LeaseLost
from tests.sql.leases import expire_leases, step_row
from tests.sql.workflows import diamond

LEASES = leases.for_dialect("postgresql")
EVENTS = events.for_dialect("postgresql")

WAIT_SECONDS = 10.0


@pytest.fixture
def broker(postgres_url: URL) -> Iterator[SqlBroker]:
    opened = SqlBroker(postgres_url)
    yield opened
    opened.close()


def succeeded(assignment: StepAssignment, result: Any) -> StepReport:
    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=Status.SUCCEEDED,
        result=result,
        attempt=assignment.attempt,
    )


def claim_root(broker: SqlBroker, ledger: Path) -> tuple[str, StepAssignment]:
    """One diamond with step ``a`` claimed (attempt 1) by a new worker; returns the worker and assignment."""
    schema = diamond.to_schema()
    broker.dispatch_workflow(schema, {"log": str(ledger), "n": 7})
    worker = broker.register_worker([schema])
    assignment = broker.get_step(worker)
    assert assignment is not None and assignment.step_name == "a"
    return worker, assignment


class Background:
    """Run ``call`` in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as exc:
            self.error = exc

    def result(self) -> Any:
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), "the background call is still blocked"
        if self.error is not None:
            raise self.error
        return self.value


def wait_until_blocked_on_a_lock(conn: sa.Connection, query_prefix: str) -> None:
    """Wait until another backend of this database waits on a lock in a statement starting so."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        blocked = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query LIKE :prefix"
            ),
            {"prefix": query_prefix + "%"},
        ).scalar_one()
        conn.rollback()  # pg_stat_activity is a snapshot per transaction
        if blocked:
            return
        time.sleep(0.01)
    pytest.fail(f"no backend blocked on a lock in {query_prefix!r}")


def test_reaper_that_selected_before_a_report_committed_leaves_the_step_succeeded(
    broker: SqlBroker, tmp_path: Path
) -> None:
    """river#1302: the reaper reads an expired step, the holder's report commits, then the reaper writes."""
    worker, held = claim_root(broker, tmp_path / "ledger")
    expire_leases(broker.engine)
    selected, reported = threading.Event(), threading.Event()

    def reaper() -> int:
        with broker.engine.begin() as conn:
            ids = list(
                conn.execute(
                    sa.text(
                        "SELECT id FROM fuseline_steps WHERE state = 'RUNNING' "
                        "AND lease_expires_at < clock_timestamp()"
                    )
                ).scalars()
            )
            assert ids, "the reaper found no expired step"
            selected.set()
            assert reported.wait(WAIT_SECONDS)
            return conn.execute(LEASES.steps_requeue_expired, {"p_ids": ids}).rowcount

    reaping = Background(reaper)
    assert selected.wait(WAIT_SECONDS)
    broker.report_step(worker, succeeded(held, 7))  # commits while the reaper's transaction is open
    reported.set()

    assert reaping.result() == 0, "the reaper's guarded update moved a step that had already succeeded"
    row = step_row(broker.engine, held.instance_id, "a")
    assert (row.state, row.attempt, row.result, row.worker_id) == ("SUCCEEDED", 1, "7", worker)
    states = {s.name: s.state for s in broker.get_instance(held.instance_id).steps}
    assert states == {"a": Status.SUCCEEDED, "b": Status.QUEUED, "c": Status.QUEUED, "d": Status.PENDING}
    kinds = [e.kind for e in broker.instance_events(held.instance_id)]
    assert "lease_expired" not in kinds
    assert kinds.count("succeeded") == 1


def test_report_waiting_on_a_reaper_that_requeued_the_step_is_rejected(
    broker: SqlBroker, tmp_path: Path
) -> None:
    """The other order: the reaper locks the step first (SKIP LOCKED), so the report waits, then loses."""
    worker, held = claim_root(broker, tmp_path / "ledger")
    expire_leases(broker.engine)
    with broker.engine.connect() as observer, broker.engine.connect() as reaper:
        with reaper.begin():
            expired = reaper.execute(LEASES.steps_expired_requeueable, {"p_limit": 100}).all()
            assert [r.name for r in expired] == ["a"]

            reporting = Background(lambda: broker.report_step(worker, succeeded(held, 7)))
            wait_until_blocked_on_a_lock(observer, "UPDATE fuseline_steps")

            # what the broker's Reaper.reap does next, in the same transaction
            requeued = reaper.execute(LEASES.steps_requeue_expired, {"p_ids": [r.id for r in expired]})
            assert requeued.rowcount == 1
            reaper.execute(
                EVENTS.events_append,
                [
                    {
                        "instance_id": r.instance_id,
                        "kind": "lease_expired",
                        "step_name": r.name,
                        "attempt": r.attempt,
                        "worker_id": r.worker_id,
                        "detail": None,
                    }
                    for r in expired
                ],
            )
        with pytest.raises(LeaseLost):
            reporting.result()

    row = step_row(broker.engine, held.instance_id, "a")
    assert (row.state, row.attempt, row.worker_id, row.result) == ("QUEUED", 1, None, None)
    again = broker.get_step(broker.register_worker([diamond.to_schema()]))
    assert (again.step_name, again.attempt) == ("a", 2)


def test_report_does_not_deadlock_with_a_claim_that_locked_its_step(
    broker: SqlBroker, tmp_path: Path
) -> None:
    """Regression: a claim can hold the lock of a step it did not take, then append an event.

    The claim's ``FOR UPDATE SKIP LOCKED`` locks the newest version of a
    candidate it saw QUEUED but another worker claimed meanwhile, rechecks
    it, skips it, and keeps the lock until commit; it then inserts its
    "claimed" event, whose foreign key needs a KEY SHARE lock on the
    instance. A report of that step holds the instance lock and waits for the
    step's row. With the instance locked ``FOR UPDATE`` (which conflicts with
    KEY SHARE) the two waited on each other: "deadlock detected" in
    multi-process runs. ``FOR NO KEY UPDATE`` serialises reports the same
    way without blocking foreign-key checks.
    """
    worker, held = claim_root(broker, tmp_path / "ledger")
    with broker.engine.connect() as observer, broker.engine.connect() as claimer:
        with claimer.begin():
            # the lock the claim's recheck leaves on the step the worker holds
            claimer.execute(sa.text("SELECT id FROM fuseline_steps WHERE name = 'a' FOR UPDATE"))

            reporting = Background(lambda: broker.report_step(worker, succeeded(held, 7)))
            wait_until_blocked_on_a_lock(observer, "UPDATE fuseline_steps")

            claimer.execute(
                sa.text("SET LOCAL lock_timeout = '5s'")
            )  # fail, not hang, if the event insert waits on the report
            claimer.execute(
                EVENTS.events_append,
                {
                    "instance_id": held.instance_id,
                    "kind": "claimed",
                    "step_name": "b",
                    "attempt": 1,
                    "worker_id": None,
                    "detail": None,
                },
            )
        reporting.result()

    assert step_row(broker.engine, held.instance_id, "a").state == "SUCCEEDED"
