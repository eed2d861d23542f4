"""A worker with slots (``Worker(..., slots=N)``) on real PostgreSQL and SQLite brokers.

Concurrency is checked by what cannot happen without it, never by timing:
N steps meet at a barrier of N parties, which times out (and fails the
steps) if fewer run at once; a gauge records that no more than N ever ran
at once. Outcomes are read from the broker: each step's result accepted
exactly once, failures retried by the broker, a lost lease fenced off
without touching the other slots, a graceful stop that finishes and
reports every running step and starts nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from fuseline import AsyncStep, Status, Step, Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import steps as steps_table
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine, Worker
from fuseline.policies import RetryPolicy

#: How long a barrier waits for its parties: far beyond any scheduling delay on a busy box.
BARRIER_SECONDS = 30.0
#: How long a test waits for a state it expects.
WAIT_SECONDS = 30.0

BACKENDS = ("postgres", "sqlite")


class Gauge:
    """How many steps run at this moment, and the most that ever ran at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


class Scene:
    """What this test's steps meet at and record (module state: steps cannot take arguments)."""

    def __init__(self, parties: int = 1) -> None:
        self.gauge = Gauge()
        self.async_barrier = asyncio.Barrier(parties)
        self.thread_barrier = threading.Barrier(parties, timeout=BARRIER_SECONDS)
        self.gate = threading.Event()  # held steps wait for it
        self.runs: Counter[int] = Counter()
        self._lock = threading.Lock()

    def ran(self, n: int) -> None:
        with self._lock:
            self.runs[n] += 1


scene = Scene()


class MeetAsync(AsyncStep):
    async def run_step(self, n: int) -> int:
        scene.gauge.enter()
        try:
            await asyncio.wait_for(scene.async_barrier.wait(), BARRIER_SECONDS)
            await asyncio.sleep(0.01)
            return n
        finally:
            scene.gauge.leave()


class MeetPlain(Step):
    def run_step(self, n: int) -> int:
        scene.gauge.enter()
        try:
            scene.thread_barrier.wait()
            time.sleep(0.01)
            return n
        finally:
            scene.gauge.leave()


class HoldAsync(AsyncStep):
    async def run_step(self, n: int) -> int:
        scene.ran(n)
        while not scene.gate.is_set():
            await asyncio.sleep(0.01)
        return n


class HoldPlain(Step):
    def run_step(self, n: int) -> int:
        scene.ran(n)
        scene.gate.wait(WAIT_SECONDS)
        return n


class FlakyAsync(AsyncStep):
    """Fails the first run of every instance, and every run when ``always`` is true."""

    async def run_step(self, n: int, always: bool = False) -> int:
        scene.ran(n)
        await asyncio.sleep(0)
        if always or scene.runs[n] == 1:
            raise RuntimeError(f"flaky {n}")
        return n


class FlakyPlain(Step):
    def run_step(self, n: int, always: bool = False) -> int:
        scene.ran(n)
        if always or scene.runs[n] == 1:
            raise RuntimeError(f"flaky {n}")
        return n


FLOWS = {
    ("meet", "async"): Workflow([MeetAsync(name="meet")], workflow_id="slots-meet-async", version="1"),
    ("meet", "plain"): Workflow([MeetPlain(name="meet")], workflow_id="slots-meet-plain", version="1"),
    ("hold", "async"): Workflow([HoldAsync(name="hold")], workflow_id="slots-hold-async", version="1"),
    ("hold", "plain"): Workflow([HoldPlain(name="hold")], workflow_id="slots-hold-plain", version="1"),
    ("flaky", "async"): Workflow(
        [FlakyAsync(name="flaky", policies=[RetryPolicy(max_retries=1)])],
        workflow_id="slots-flaky-async",
        version="1",
    ),
    ("flaky", "plain"): Workflow(
        [FlakyPlain(name="flaky", policies=[RetryPolicy(max_retries=1)])],
        workflow_id="slots-flaky-plain",
        version="1",
    ),
}

MakeWorker = Callable[..., Worker]


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest) -> SqlBroker:
    return request.getfixturevalue(f"broker_factory_{request.param}")(lease_seconds=30.0)


@pytest.fixture
def make_worker() -> Iterator[MakeWorker]:
    """``make_worker(broker, workflow, **options)``: a Worker on its own client, closed at teardown."""
    made: list[Worker] = []

    def make(on: SqlBroker, workflow: Workflow, **options: Any) -> Worker:
        made.append(Worker(LocalBrokerClient(on), [workflow], **options))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def use_scene(parties: int = 1) -> Scene:
    global scene
    scene = Scene(parties)
    return scene


def dispatch(broker: SqlBroker, workflow: Workflow, count: int, **inputs: Any) -> list[str]:
    return broker.dispatch_many(workflow.to_schema(), [{"n": n, **inputs} for n in range(count)])


def succeeded_events(broker: SqlBroker, instance_id: str) -> list[Any]:
    return [e for e in broker.instance_events(instance_id) if e.kind == "succeeded"]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def states(broker: SqlBroker, ids: list[str], step: str) -> Counter[Status]:
    return Counter(broker.get_instance(i).step(step).state for i in ids)


# -- concurrency --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["async", "plain"])
def test_n_slots_run_n_steps_at_once_and_never_more(
    broker: SqlBroker, make_worker: MakeWorker, kind: str
) -> None:
    """Eight steps meet at a barrier of eight: with fewer at once it times out and they fail.
    Sixteen instances in all: two rounds, never more than eight running."""
    slots = 8
    use_scene(parties=slots)
    workflow = FLOWS[("meet", kind)]
    ids = dispatch(broker, workflow, 2 * slots)
    worker = make_worker(broker, workflow, slots=slots)

    assert worker.work() == 2 * slots

    for n, instance_id in enumerate(ids):
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, n), info.step("meet").error
        assert len(succeeded_events(broker, instance_id)) == 1
        assert info.step("meet").attempt == 1
    assert scene.gauge.peak == slots
    assert worker.steps_run == 2 * slots


def test_processengine_runs_async_and_plain_steps_side_by_side(
    broker: SqlBroker, make_worker: MakeWorker
) -> None:
    """One worker serving both workflows: four async and four plain steps all held at once (the
    gate opens only once all eight run), so the loop and the threads work together."""
    use_scene()
    flows = [FLOWS[("hold", "async")], FLOWS[("hold", "plain")]]
    ids = [i for flow in flows for i in dispatch(broker, flow, 4)]
    worker = ProcessEngine(LocalBrokerClient(broker), flows, slots=8)
    try:
        opener = threading.Thread(
            target=lambda: (
                wait_for(lambda: sum(scene.runs.values()) == 8, "8 steps running"),
                scene.gate.set(),
            )
        )
        opener.start()
        assert worker.work() == 8
        opener.join()
    finally:
        worker.close()
    assert all(broker.get_instance(i).status == Status.SUCCEEDED for i in ids)
    assert all(len(succeeded_events(broker, i)) == 1 for i in ids)


# -- failures --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["async", "plain"])
def test_a_failing_step_is_reported_failed_and_retried_by_the_broker(
    broker: SqlBroker, make_worker: MakeWorker, kind: str
) -> None:
    """Each step fails its first run: the broker schedules the retry (RetryPolicy(max_retries=1)),
    the second run succeeds; a step that always fails ends FAILED after its two runs."""
    use_scene()
    workflow = FLOWS[("flaky", kind)]
    ids = dispatch(broker, workflow, 4)
    doomed = broker.dispatch_workflow(workflow.to_schema(), {"n": 99, "always": True})
    worker = make_worker(broker, workflow, slots=4)

    assert worker.work() == 10

    for n, instance_id in enumerate(ids):
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, n)
        step = info.step("flaky")
        assert (step.attempt, step.retries) == (2, 1)
        kinds = [e.kind for e in broker.instance_events(instance_id) if e.step_name == "flaky"]
        assert kinds.count("retry_scheduled") == 1 and kinds.count("succeeded") == 1, kinds
    failed = broker.get_instance(doomed)
    assert failed.status == Status.FAILED
    assert failed.step("flaky").attempt == 2
    assert "RuntimeError: flaky 99" in (failed.step("flaky").error or "")
    assert scene.runs[99] == 2


@pytest.mark.parametrize("kind", ["async", "plain"])
def test_a_lost_lease_drops_that_slots_result_and_leaves_the_others_alone(
    broker: SqlBroker,
    make_worker: MakeWorker,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One of four running steps loses its lease (it expires, another worker claims it and
    reports first); the slot's late result is dropped, the three others are reported as usual."""
    use_scene()
    workflow = FLOWS[("hold", kind)]
    ids = dispatch(broker, workflow, 4)
    worker = make_worker(broker, workflow, slots=4, heartbeat_interval=0.2)
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(worker.work()))
    runner.start()
    try:
        wait_for(lambda: states(broker, ids, "hold")[Status.RUNNING] == 4, "4 steps running")
        victim = ids[2]
        rival = LocalBrokerClient(broker)
        rival_id = rival.register_worker([workflow.to_schema()])

        def steal() -> list[Any]:
            # A beat between the two calls renews the lease again: then try once more.
            expire_lease(broker, victim, "hold")
            return rival.get_steps(rival_id, 4)

        (taken,) = wait_for(steal, "the expired step to be claimed again")
        assert (taken.instance_id, taken.attempt) == (victim, 2)
        beats = heartbeats(broker, worker.worker_id)
        wait_for(lambda: heartbeats(broker, worker.worker_id) >= beats + 2, "two more heartbeats")
        rival.report_step(rival_id, report_of(taken, "rival"))
    finally:
        scene.gate.set()
        runner.join(WAIT_SECONDS)
    assert done == [4]
    assert worker.steps_run == 3
    assert broker.get_instance(victim).result == "rival"
    for n, instance_id in enumerate(ids):
        assert len(succeeded_events(broker, instance_id)) == 1
        if instance_id != victim:
            info = broker.get_instance(instance_id)
            assert (info.result, info.step("hold").worker_id) == (n, worker.worker_id)
    dropped = [r.getMessage() for r in caplog.records if "dropping the result" in r.getMessage()]
    assert dropped == [f"dropping the result of step hold of instance {victim}: its lease was lost"]


def expire_lease(broker: SqlBroker, instance_id: str, step: str) -> None:
    """Move one running step's lease a minute into the past, as if its worker had stopped beating
    (in the format the broker writes times on each database, as tests/sql/leases.py does)."""
    if broker.engine.dialect.name == "postgresql":
        past = "now() - interval '1 minute'"
    else:
        past = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-60 seconds') || '000'"
    with broker.engine.begin() as conn:
        moved = conn.execute(
            sa.update(steps_table)
            .where(steps_table.c.instance_id == instance_id, steps_table.c.name == step)
            .where(steps_table.c.state == "RUNNING")
            .values(lease_expires_at=sa.literal_column(past))
        ).rowcount
    assert moved == 1


def heartbeats(broker: SqlBroker, worker_id: str) -> float:
    (me,) = [w for w in broker.list_workers() if w.worker_id == worker_id]
    return me.last_heartbeat.timestamp()


def report_of(assignment: Any, result: Any) -> Any:
    from fuseline import StepReport

    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=Status.SUCCEEDED,
        result=result,
        attempt=assignment.attempt,
        version=assignment.version,
    )


# -- stopping --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["async", "plain"])
def test_graceful_stop_finishes_and_reports_every_running_step_and_starts_no_more(
    broker: SqlBroker, make_worker: MakeWorker, kind: str
) -> None:
    use_scene()
    workflow = FLOWS[("hold", kind)]
    ids = dispatch(broker, workflow, 7)
    worker = make_worker(broker, workflow, slots=4)
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(worker.work(block=True, poll_interval=0.05)))
    runner.start()
    try:
        wait_for(lambda: states(broker, ids, "hold")[Status.RUNNING] == 4, "4 steps running")
        worker.stop()
        time.sleep(0.2)  # a stopping worker that claimed more would show it now
        assert states(broker, ids, "hold") == Counter({Status.RUNNING: 4, Status.QUEUED: 3})
    finally:
        scene.gate.set()
        runner.join(WAIT_SECONDS)
    assert not runner.is_alive()
    assert done == [4]
    finished = states(broker, ids, "hold")
    assert finished == Counter({Status.SUCCEEDED: 4, Status.QUEUED: 3}), finished
    assert sum(scene.runs.values()) == 4
    assert all(
        len(succeeded_events(broker, i)) == (broker.get_instance(i).status == Status.SUCCEEDED) for i in ids
    )
    worker.close()
    left = [broker.get_instance(i).step("hold") for i in ids]
    assert all(s.worker_id is None for s in left if s.state == Status.QUEUED)


def test_max_steps_counts_the_steps_started_across_slots(broker: SqlBroker, make_worker: MakeWorker) -> None:
    use_scene(parties=1)
    workflow = FLOWS[("meet", "async")]
    ids = dispatch(broker, workflow, 5)
    worker = make_worker(broker, workflow, slots=4)
    assert worker.work(max_steps=3) == 3
    assert states(broker, ids, "meet") == Counter({Status.SUCCEEDED: 3, Status.QUEUED: 2})


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("slots", [0, -1, 1.5, True])
def test_slots_below_one_or_not_a_whole_number_are_refused(
    broker: SqlBroker, slots: Any, caplog: pytest.LogCaptureFixture
) -> None:
    workers_before = len(broker.list_workers())
    with pytest.raises(ValueError, match="slots must be an integer of at least 1"):
        Worker(LocalBrokerClient(broker), [FLOWS[("meet", "async")]], slots=slots)
    assert len(broker.list_workers()) == workers_before  # refused before registering


def test_prefetch_beside_slots_is_refused(broker: SqlBroker) -> None:
    with pytest.raises(ValueError, match="prefetch=4 cannot be combined with slots=2"):
        Worker(LocalBrokerClient(broker), [FLOWS[("meet", "async")]], slots=2, prefetch=4)


def test_one_slot_is_the_single_step_loop(broker: SqlBroker, make_worker: MakeWorker) -> None:
    """slots=1 (the default) never builds the slot machinery: no thread, no event loop."""
    use_scene(parties=1)
    workflow = FLOWS[("meet", "plain")]
    dispatch(broker, workflow, 2)
    worker = make_worker(broker, workflow)
    assert worker.slots == 1
    before = {t.name for t in threading.enumerate()}
    assert worker.work() == 2
    assert not {t.name for t in threading.enumerate()} - before
    assert scene.gauge.peak == 1
    logging.getLogger(__name__).debug("ran on %s", threading.current_thread().name)
