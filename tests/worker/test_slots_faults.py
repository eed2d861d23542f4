"""A worker with slots under faults: a refused heartbeat, a worker listed dead, report failures.

Each test runs a real ``Worker(..., slots=N)`` on a real PostgreSQL or SQLite
broker through :class:`.faults.FaultyClient`, which raises the injected
error from one call and passes everything else through; outcomes are read
from the broker. The single-slot loop meets the same faults in
``test_worker_faults.py``; these check that the slot loop handles them the
same way for every running slot.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fuseline import AsyncStep, Status, StepReport, Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.engines import Worker
from fuseline.errors import BrokerError, DatabaseError, WorkerExpired
from tests.worker.faults import FaultyClient, outage

#: A step long enough for several heartbeats at HEARTBEAT seconds.
NAP = 0.3
HEARTBEAT = 0.05
BACKENDS = ("postgres", "sqlite")


class Nap(AsyncStep):
    async def run_step(self, n: int) -> int:
        await asyncio.sleep(NAP)
        return n


NAPPING = Workflow([Nap(name="nap")], workflow_id="slots-faults-nap", version="1")


@pytest.fixture(params=BACKENDS)
def broker_factory(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"broker_factory_{request.param}")


@pytest.fixture
def made() -> Iterator[list[Any]]:
    workers: list[Any] = []
    yield workers
    for worker in workers:
        worker.close()


def dispatch(broker: SqlBroker, count: int) -> list[str]:
    return broker.dispatch_many(NAPPING.to_schema(), [{"n": n} for n in range(count)])


def warnings_naming(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_a_permanent_heartbeat_error_stops_claiming_and_finishes_every_running_slot(
    broker_factory: Any, made: list[Any]
) -> None:
    broker = broker_factory(lease_seconds=30.0)
    ids = dispatch(broker, 5)
    denied = DatabaseError("keep_alive: permission denied for table fuseline_workers")
    client = FaultyClient(broker, keep_alive=[lambda _id: denied])
    worker = Worker(client, [NAPPING], slots=3, heartbeat_interval=HEARTBEAT)
    made.append(worker)

    with pytest.raises(DatabaseError, match="permission denied"):
        worker.work()

    assert client.calls["keep_alive"] == 1, "the heartbeat went on after a permanent error"
    steps = [broker.get_instance(i).step("nap") for i in ids]
    assert sorted(s.state for s in steps) == [Status.QUEUED] * 2 + [Status.SUCCEEDED] * 3
    assert broker.keep_alive(worker.worker_id) == []


def test_a_heartbeat_refused_as_dead_drops_every_running_result_and_registers_again(
    broker_factory: Any, made: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The broker listed the worker dead (here the client only said so): the three steps running
    may run elsewhere now, so their results are dropped; they run again once their leases lapse."""
    broker = broker_factory(lease_seconds=1.0)
    ids = dispatch(broker, 3)
    worker = Worker(
        FaultyClient(broker, keep_alive=[WorkerExpired]), [NAPPING], slots=3, heartbeat_interval=HEARTBEAT
    )
    made.append(worker)
    first_id = worker.worker_id
    deadline = time.monotonic() + 30

    with caplog.at_level(logging.WARNING, logger="fuseline.worker"):
        ran = worker.work(
            block=True,
            poll_interval=0.05,
            until=lambda: not broker.has_running_instances() or time.monotonic() > deadline,
        )

    assert worker.worker_id != first_id
    assert len(warnings_naming(caplog, "dropping the result of step nap")) == 3
    assert ran == 6
    for n, instance_id in enumerate(ids):
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, n)
        assert info.step("nap").worker_id == worker.worker_id
        assert [e.kind for e in broker.instance_events(instance_id)].count("succeeded") == 1


def test_reports_are_sent_through_an_outage(broker_factory: Any, made: list[Any]) -> None:
    broker = broker_factory(lease_seconds=30.0)
    ids = dispatch(broker, 6)
    client = FaultyClient(broker, report_steps=[outage, outage], report_step=[outage, outage])
    worker = Worker(client, [NAPPING], slots=3)
    made.append(worker)

    assert worker.work() == 6

    assert client.calls["report_steps"] + client.calls["report_step"] >= 3
    for instance_id in ids:
        assert [e.kind for e in broker.instance_events(instance_id)].count("succeeded") == 1


class FailsOnce(FaultyClient):
    """The first report call, whichever form it takes, fails with an error that is no outage."""

    def __init__(self, broker: SqlBroker) -> None:
        super().__init__(broker)
        self._failed = threading.Event()

    def _fail_once(self) -> None:
        if not self._failed.is_set():
            self._failed.set()
            raise DatabaseError("report: a statement timeout (injected)")

    def report_step(self, worker_id: str, report: StepReport) -> None:
        self._fail_once()
        super().report_step(worker_id, report)

    def report_steps(self, worker_id: str, reports: Any) -> list[BrokerError | None]:
        self._fail_once()
        return super().report_steps(worker_id, reports)


def test_a_report_batch_that_failed_is_sent_again_by_the_loop(
    broker_factory: Any, made: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    broker = broker_factory(lease_seconds=30.0)
    ids = dispatch(broker, 6)
    worker = Worker(FailsOnce(broker), [NAPPING], slots=3)
    made.append(worker)

    with caplog.at_level(logging.WARNING, logger="fuseline.worker"):
        assert worker.work() == 6

    assert warnings_naming(caplog, "sending step reports failed")
    for n, instance_id in enumerate(ids):
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, n)
        assert [e.kind for e in broker.instance_events(instance_id)].count("succeeded") == 1


class StopsDuringClaim(FaultyClient):
    """Asks the worker to stop while its second claim is on its way (a SIGTERM at that moment)."""

    def __init__(self, broker: SqlBroker) -> None:
        super().__init__(broker)
        self.worker: Worker | None = None

    def get_steps(self, worker_id: str, limit: int) -> list[Any]:
        claimed = super().get_steps(worker_id, limit)
        if self.calls["get_steps"] == 2 and self.worker is not None:
            self.worker.stop()
        return claimed

    def get_step(self, worker_id: str) -> Any:
        claimed = self.get_steps(worker_id, 1)
        return claimed[0] if claimed else None


def test_steps_claimed_as_the_stop_arrives_are_given_back_unstarted(
    broker_factory: Any, made: list[Any]
) -> None:
    """Three steps run; as they finish, the next claim brings more just as the worker is asked
    to stop: those are released at once (their claim refunded), never started."""
    broker = broker_factory(lease_seconds=30.0)
    ids = dispatch(broker, 6)
    client = StopsDuringClaim(broker)
    worker = Worker(client, [NAPPING], slots=3)
    client.worker = worker
    made.append(worker)

    assert worker.work() == 3

    assert client.calls["get_steps"] == 2
    states = {i: broker.get_instance(i).step("nap") for i in ids}
    done = [i for i, s in states.items() if s.state == Status.SUCCEEDED]
    back = [i for i, s in states.items() if s.state == Status.QUEUED]
    assert (len(done), len(back)) == (3, 3), states
    released = 0
    for instance_id in back:  # the second claim took one to three of them, as slots freed
        kinds = [e.kind for e in broker.instance_events(instance_id) if e.step_name == "nap"]
        assert kinds in (["queued"], ["queued", "claimed", "released"]), kinds
        released += kinds[-1] == "released"
        assert states[instance_id].worker_id is None and states[instance_id].attempt == 0
    assert released >= 1
