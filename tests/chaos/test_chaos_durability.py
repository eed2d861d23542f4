"""What fuseline calls durable waits for the WAL flush; a claim alone does not.

A server whose ``synchronous_standby_names`` names a standby that never
connects makes every commit that waits for the flush wait forever (for that
standby), while a commit with ``synchronous_commit = off`` returns at once.
That tells the two apart exactly, with no crash timing involved:

- an accepted report on the worker's hot path (``report_and_claim``: the
  report and the next claim in one transaction) must wait. They once shared
  a transaction that also set ``synchronous_commit = off`` for the claim, so
  a crash could lose reports the worker had been told were accepted;
- a batch of reports (``report_steps``) and a dispatch must wait;
- a claim on its own must not: it is safe to lose (the step is QUEUED again
  after recovery, and the worker's report is refused), and that is what
  makes claims cheap.

Releasing the standby requirement lets the waiting commits finish, and the
results are checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from fuseline import StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.states import Status
from tests.chaos.conftest import migrated_postgres
from tests.chaos.server import OwnServer
from tests.conftest import url_text
from tests.contract import workflows as wf
from tests.contract.support import report

pytestmark = pytest.mark.slow

WAIT_SECONDS = 10.0


@pytest.fixture
def server() -> Iterator[OwnServer]:
    own = OwnServer.start_new()
    yield own
    own.close()


def require_a_standby(server: OwnServer, name: str | None) -> None:
    """Make commits that wait for the flush wait for standby ``name`` too (None: for none).

    A reload reaches each session before the next command it reads; once a new session
    sees the setting the postmaster has signalled them all, and a moment later they have it.
    """
    engine = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if name is None:
                conn.exec_driver_sql("ALTER SYSTEM RESET synchronous_standby_names")
            else:
                conn.exec_driver_sql(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
            conn.exec_driver_sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with engine.connect() as fresh:
                if fresh.exec_driver_sql("SHOW synchronous_standby_names").scalar_one() == (name or ""):
                    break
            assert time.monotonic() < deadline, "the server did not take the new setting"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        engine.dispose()


def waiting_for_the_standby(server: OwnServer) -> int:
    engine = sa.create_engine(server.admin_url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
            ).scalar_one()
    finally:
        engine.dispose()


class Call(threading.Thread):
    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call, self.result, self.error = call, None, None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # handed to the test
            self.error = exc


def ok(assignment: Any, result: Any) -> StepReport:
    return report(assignment, Status.SUCCEEDED, result, version=assignment.version)


def waits_for_the_flush(server: OwnServer, call: Callable[[], Any]) -> Any:
    """Run ``call`` while commits must reach a standby that never comes: it must block in its
    commit; then let it finish and return what it returned."""
    require_a_standby(server, "nobody")
    running = Call(call)
    running.start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while waiting_for_the_standby(server) == 0:
            assert running.is_alive(), f"the commit did not wait for the flush ({running.error!r})"
            assert time.monotonic() < deadline, "no commit waited for the flush"
            time.sleep(0.05)
        assert running.is_alive()
    finally:
        require_a_standby(server, None)
    running.join(WAIT_SECONDS)
    assert not running.is_alive() and running.error is None, running.error
    return running.result


def test_reports_and_dispatches_wait_for_the_flush_and_a_lone_claim_does_not(server: OwnServer) -> None:
    url = url_text(migrated_postgres(server))
    schema = wf.SEQUENCE.to_schema()
    broker = SqlBroker(url, listen=False)
    try:
        broker.register_workflows([schema])
        worker = broker.register_worker([schema])
        hot = wf.SEQUENCE.dispatch(broker, {"x": 1})
        first = broker.get_step(worker)
        assert first is not None and first.instance_id == hot

        following = waits_for_the_flush(server, lambda: broker.report_and_claim(worker, ok(first, 1)))
        assert following is not None and (following.instance_id, following.step_name) == (hot, "second")

        batched = waits_for_the_flush(server, lambda: wf.SEQUENCE.dispatch(broker, {"x": 2}))
        (other,) = broker.get_steps(worker, 1)
        assert (other.instance_id, other.step_name) == (batched, "first")
        outcomes = waits_for_the_flush(server, lambda: broker.report_steps(worker, [ok(other, 2)]))
        assert outcomes == [None]

        require_a_standby(server, "nobody")
        try:
            began = time.monotonic()
            lone = broker.get_step(worker)  # would block here if the claim waited for the flush
            assert time.monotonic() - began < WAIT_SECONDS / 2
            assert lone is not None and waiting_for_the_standby(server) == 0
        finally:
            require_a_standby(server, None)

        assert broker.get_instance(hot).step("first").result == 1
        assert broker.get_instance(batched).step("first").result == 2
    finally:
        broker.close()
