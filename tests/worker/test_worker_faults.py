"""The worker loop under faults: refused heartbeats, outages, a worker listed dead, jittered retries.

Every test runs a real :class:`Worker` on a real MemoryBroker through a
:class:`.faults.FaultyClient`, which raises the injected error from one call
and otherwise passes everything through; outcomes are read from the broker.
Tests named for a defect failed on the worker loop before it was fixed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fuseline import Status, Workflow
from fuseline.broker import MemoryBroker
from fuseline.engines import ProcessEngine, Worker
from fuseline.engines.process import RECONNECT_DELAYS
from fuseline.errors import DatabaseError, DatabaseUnavailable, UnknownWorker, WorkerExpired
from tests.contract import workflows as wf
from tests.contract.support import trail
from tests.worker.faults import Fault, FaultyClient, outage

#: A step long enough for several heartbeats at HEARTBEAT seconds.
NAP = 0.3
HEARTBEAT = 0.05

MakeWorker = Callable[..., Worker]


@pytest.fixture(autouse=True)
def _reset_step_counts() -> None:
    wf.reset()


@pytest.fixture
def make_worker() -> Iterator[MakeWorker]:
    """``make_worker(client, *workflows, **options)``: a Worker, closed at teardown."""
    made: list[Worker] = []

    def make(client: FaultyClient, *flows: Workflow, **options: float) -> Worker:
        worker = Worker(client, list(flows), **options)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


def warnings_naming(caplog: pytest.LogCaptureFixture, *texts: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and all(text in record.getMessage() for text in texts)
    ]


def test_process_engine_is_the_worker_under_its_first_name() -> None:
    from fuseline.engines import process

    assert ProcessEngine is Worker
    assert process.ProcessEngine is Worker


def test_without_prefetch_each_report_travels_with_the_next_claim(make_worker: MakeWorker) -> None:
    """The hot path: one ``report_and_claim`` per step, and a drain ends on its empty claim."""
    broker = MemoryBroker()
    ids = [wf.SEQUENCE.dispatch(broker, {"x": x}) for x in (1, 2)]
    client = FaultyClient(broker)

    assert make_worker(client, wf.SEQUENCE).work() == 4

    assert [broker.get_instance(i).result for i in ids] == [20, 30]
    assert client.calls == {"register_worker": 1, "get_step": 1, "report_and_claim": 4}


# -- a: heartbeats --------------------------------------------------------------------------------
PERMANENT: dict[str, Fault] = {
    "unknown-worker": UnknownWorker,
    "permission-denied": lambda _id: DatabaseError(
        "keep_alive: permission denied for table fuseline_workers"
    ),
    "bug": lambda _id: ZeroDivisionError("a bug in the heartbeat"),
}


@pytest.mark.parametrize("prefetch", [1, 2])
@pytest.mark.parametrize("kind", list(PERMANENT))
def test_a_permanent_heartbeat_error_stops_the_worker_after_the_step_in_hand(
    make_worker: MakeWorker, kind: str, prefetch: int
) -> None:
    broker = MemoryBroker()
    ids = [wf.SLEEPY.dispatch(broker, {"seconds": NAP}) for _ in range(3)]
    client = FaultyClient(broker, keep_alive=[PERMANENT[kind]])
    worker = make_worker(client, wf.SLEEPY, heartbeat_interval=HEARTBEAT, prefetch=prefetch)

    with pytest.raises((UnknownWorker, DatabaseError, ZeroDivisionError)) as raised:
        worker.work()

    assert type(raised.value) is type(PERMANENT[kind]("w"))
    assert client.calls["keep_alive"] == 1, "the heartbeat went on after a permanent error"
    assert wf.CALLS["sleepy"] == 1
    done = broker.get_instance(ids[0])
    assert (done.status, done.result) == (Status.SUCCEEDED, "rested"), "the step in hand was not reported"
    for instance_id in ids[1:]:
        assert broker.get_instance(instance_id).step("sleepy").state is Status.QUEUED
    assert (("released", "sleepy") in trail(broker, ids[1])) is (prefetch == 2)
    assert broker.keep_alive(worker.worker_id) == []


def test_a_heartbeat_during_an_outage_is_retried_at_the_next_beat(make_worker: MakeWorker) -> None:
    """A transient error is not permanent: the next beat renews the lease, nobody takes the step."""
    broker = MemoryBroker(lease_seconds=0.9)
    instance_id = wf.SLEEPY.dispatch(broker, {"seconds": 1.5})
    client = FaultyClient(broker, keep_alive=[outage])
    worker = make_worker(client, wf.SLEEPY)
    rival = broker.register_worker([wf.SLEEPY.to_schema()])
    ran: list[int] = []
    thread = threading.Thread(target=lambda: ran.append(worker.work()))
    thread.start()
    while broker.get_instance(instance_id).step("sleepy").state is not Status.RUNNING:
        assert thread.is_alive(), "the worker never claimed the step"
        time.sleep(0.01)
    stolen = []
    while thread.is_alive():  # a rival keeps asking while the step runs
        broker.keep_alive(rival)  # (a worker that stops beating is listed dead)
        assignment = broker.get_step(rival)
        if assignment is not None:
            stolen.append(assignment)
        time.sleep(0.05)
    thread.join()

    assert (ran, stolen) == ([1], [])
    assert client.calls["keep_alive"] >= 3
    info = broker.get_instance(instance_id)
    assert (info.status, info.step("sleepy").attempt) == (Status.SUCCEEDED, 1)


# -- b: the burst check ---------------------------------------------------------------------------
class FlakyCheck:
    """A burst worker's ``until``: raises DatabaseUnavailable ``failures`` times, then asks the broker."""

    def __init__(self, check: Callable[[], bool], failures: int) -> None:
        self.check = check
        self.failures = failures
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("server closed the connection unexpectedly (injected)")
        return self.check()


def test_a_database_blip_in_the_burst_check_does_not_kill_the_worker(make_worker: MakeWorker) -> None:
    broker = MemoryBroker()
    ids = [wf.SINGLE.dispatch(broker, {"x": x}) for x in (1, 2)]
    check = FlakyCheck(lambda: not broker.has_running_instances(), failures=2)

    ran = make_worker(FaultyClient(broker), wf.SINGLE).work(block=True, poll_interval=0.01, until=check)

    assert ran == 2
    assert check.calls == 3
    assert [broker.get_instance(i).result for i in ids] == [2, 4]


# -- d: a worker listed dead ----------------------------------------------------------------------
@pytest.mark.parametrize(("call", "prefetch"), [("get_step", 1), ("get_steps", 2)])
def test_a_claim_refused_because_the_worker_is_listed_dead_registers_it_again(
    make_worker: MakeWorker, caplog: pytest.LogCaptureFixture, call: str, prefetch: int
) -> None:
    broker = MemoryBroker()
    ids = [wf.SEQUENCE.dispatch(broker, {"x": x}) for x in (1, 2)]
    worker = make_worker(FaultyClient(broker, **{call: [WorkerExpired]}), wf.SEQUENCE, prefetch=prefetch)
    first_id = worker.worker_id

    with caplog.at_level(logging.WARNING, logger="fuseline.worker"):
        assert worker.work() == 4

    assert worker.worker_id != first_id
    assert warnings_naming(caplog, first_id, worker.worker_id)
    for instance_id in ids:
        info = broker.get_instance(instance_id)
        assert info.status is Status.SUCCEEDED
        assert {(s.worker_id, s.attempt) for s in info.steps} == {(worker.worker_id, 1)}
    assert (wf.CALLS["first"], wf.CALLS["second"]) == (2, 2)


def test_a_heartbeat_refused_because_the_worker_is_listed_dead_registers_it_again(
    make_worker: MakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """The step in hand may run elsewhere now: its result is dropped, and the step runs again
    once its lease lapses (the broker listed the worker dead; here the test's client only said so)."""
    broker = MemoryBroker(lease_seconds=1.0)
    instance_id = wf.SLEEPY.dispatch(broker, {"seconds": NAP})
    worker = make_worker(
        FaultyClient(broker, keep_alive=[WorkerExpired]), wf.SLEEPY, heartbeat_interval=HEARTBEAT
    )
    first_id = worker.worker_id
    deadline = time.monotonic() + 30

    with caplog.at_level(logging.WARNING, logger="fuseline.worker"):
        ran = worker.work(
            block=True,
            poll_interval=0.05,
            until=lambda: not broker.has_running_instances() or time.monotonic() > deadline,
        )

    assert worker.worker_id != first_id
    assert warnings_naming(caplog, first_id, worker.worker_id)
    assert warnings_naming(caplog, "dropping the result of step sleepy")
    assert ran == 2
    assert wf.CALLS["sleepy"] == 2
    info = broker.get_instance(instance_id)
    assert info.status is Status.SUCCEEDED
    assert info.step("sleepy").worker_id == worker.worker_id


def test_a_report_refused_with_its_claim_because_the_worker_is_listed_dead_is_sent_again(
    make_worker: MakeWorker,
) -> None:
    """A report may have been accepted before the claim was refused: it is sent again under the
    old id (an exact replay is a no-op), then the worker registers again and claims."""
    broker = MemoryBroker()
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    worker = make_worker(FaultyClient(broker, report_and_claim=[WorkerExpired]), wf.SEQUENCE)
    first_id = worker.worker_id

    assert worker.work() == 2

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, 20)
    assert (info.step("first").worker_id, info.step("second").worker_id) == (first_id, worker.worker_id)
    assert (wf.CALLS["first"], wf.CALLS["second"]) == (1, 1)


# -- e: retries during an outage ------------------------------------------------------------------
def test_retries_while_the_database_is_unavailable_are_jittered(
    make_worker: MakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers that lost the database at the same moment must not all come back at the same moment."""
    waits: list[list[float]] = []
    for _ in range(2):
        broker = MemoryBroker()
        wf.SINGLE.dispatch(broker, {"x": 1})
        worker = make_worker(FaultyClient(broker, get_step=[outage] * 3), wf.SINGLE)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fuseline.worker"):
            assert worker.work() == 1
        logged = [re.search(r"retrying in ([0-9.]+)s", message) for message in warnings_naming(caplog)]
        waits.append([float(match.group(1)) for match in logged if match])

    for delays in waits:
        assert len(delays) == 3
        for delay, nominal in zip(delays, RECONNECT_DELAYS, strict=False):
            assert 0.5 * nominal - 0.001 <= delay <= 1.5 * nominal + 0.001
    assert waits[0] != waits[1], f"two workers retried in lockstep: {waits}"


def test_stop_during_an_outage_gives_up_the_claim(make_worker: MakeWorker) -> None:
    broker = MemoryBroker()
    wf.SINGLE.dispatch(broker, {"x": 1})
    worker: Worker | None = None

    def stop_then_fail(_id: str) -> BaseException:
        assert worker is not None
        worker.stop()
        return DatabaseUnavailable("connection refused (injected)")

    worker = make_worker(FaultyClient(broker, get_step=[stop_then_fail, outage]), wf.SINGLE)

    assert worker.work(block=True) == 0
    assert broker.list_instances()[0].status is Status.RUNNING


def test_a_report_is_retried_until_delivered_even_after_stop(make_worker: MakeWorker) -> None:
    """Stop asked during an outage: the claim that travels with the report is given up, the report not."""
    broker = MemoryBroker()
    ids = [wf.SINGLE.dispatch(broker, {"x": x}) for x in (1, 2)]
    worker: Worker | None = None

    def stop_then_fail(_id: str) -> BaseException:
        assert worker is not None
        worker.stop()
        return DatabaseUnavailable("connection refused (injected)")

    client = FaultyClient(broker, report_and_claim=[stop_then_fail], report_step=[outage, outage])
    worker = make_worker(client, wf.SINGLE)

    assert worker.work(block=True) == 1

    assert broker.get_instance(ids[0]).result == 2
    assert broker.get_instance(ids[1]).step("double").state is Status.QUEUED
    assert (client.calls["report_and_claim"], client.calls["report_step"], client.calls["get_step"]) == (
        1,
        3,
        1,
    )
