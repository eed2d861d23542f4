"""Prefetch: claiming, reporting and releasing steps in batches, and the engine that does so."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from fuseline import Status, Step, StepAssignment, StepReport, Workflow
from fuseline.engines import ProcessEngine
from fuseline.errors import LeaseLost, ReportConflict

from . import workflows as wf
from .support import register, report, states, trail

LEASE = 1.0  # claims are the only heartbeats here: see test_retries.py
PAST_LEASE = 1.3


def ok(assignment: StepAssignment, result, *, attempt: int | None = None) -> StepReport:
    """A success report as the engine sends it (attempt and version), so brokers take their fast path."""
    attempt = assignment.attempt if attempt is None else attempt
    return report(assignment, Status.SUCCEEDED, result, attempt=attempt, version=assignment.version)


def failed(assignment: StepAssignment, error: str) -> StepReport:
    return report(assignment, Status.FAILED, error=error, version=assignment.version)


def held(assignments: list[StepAssignment]) -> list[tuple[str, str, int]]:
    return [(str(a.instance_id), a.step_name, a.attempt) for a in assignments]


def step_of(broker, instance_id: str, name: str) -> tuple[Status, int, str | None]:
    step = broker.get_instance(instance_id).step(name)
    return step.state, step.attempt, step.worker_id


# -- get_steps -----------------------------------------------------------------------------------
def test_get_steps_claims_up_to_the_limit_in_queue_order_with_a_lease_each(broker):
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(5)]
    wf.SEQUENCE.dispatch(broker, {"x": 9})  # another workflow: not this worker's
    worker = register(broker, wf.SINGLE)

    batch = broker.get_steps(worker, 3)

    now = datetime.now(timezone.utc)
    assert held(batch) == [(i, "double", 1) for i in ids[:3]]
    assert [a.payload for a in batch] == [{"workflow_inputs": {"x": n}, "results": {}} for n in range(3)]
    assert all(a.expires_at > now and abs(a.lease_seconds - 30.0) < 5.0 for a in batch)
    for instance_id in ids[:3]:
        assert step_of(broker, instance_id, "double") == (Status.RUNNING, 1, worker)
    for instance_id in ids[3:]:
        assert broker.get_instance(instance_id).step("double").state is Status.QUEUED


def test_get_steps_keeps_queue_order_across_the_workers_workflows(broker):
    ids = [(flow.dispatch(broker, {"x": n}), flow) for n, flow in enumerate([wf.SINGLE, wf.SEQUENCE] * 3)]
    worker = register(broker, wf.SINGLE, wf.SEQUENCE)

    batch = broker.get_steps(worker, 4) + broker.get_steps(worker, 4)

    expected = [(i, "double" if flow is wf.SINGLE else "first", 1) for i, flow in ids]
    assert held(batch) == expected
    assert [a.workflow_id for a in batch] == [flow.workflow_id for _, flow in ids]


def test_get_steps_returns_fewer_when_fewer_are_queued_and_none_when_empty(broker):
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(2)]
    worker = register(broker, wf.SINGLE)

    assert held(broker.get_steps(worker, 5)) == [(i, "double", 1) for i in ids]
    assert broker.get_steps(worker, 5) == []


def test_two_workers_batches_never_overlap(broker):
    """Every queued step is handed out exactly once, even to workers claiming at the same time."""
    ids = {wf.SINGLE.dispatch(broker, {"x": n}) for n in range(24)}
    workers = [register(broker, wf.SINGLE) for _ in range(2)]
    claimed: dict[str, list[StepAssignment]] = {w: [] for w in workers}

    def drain(worker: str) -> None:
        while batch := broker.get_steps(worker, 3):
            claimed[worker].extend(batch)

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    everything = [a.instance_id for batch in claimed.values() for a in batch]
    assert sorted(everything) == sorted(ids)
    assert all(a.attempt == 1 for batch in claimed.values() for a in batch)
    for worker, batch in claimed.items():
        assert all(step_of(broker, a.instance_id, "double")[2] == worker for a in batch)


def test_keep_alive_after_get_steps_renews_every_prefetched_step(broker):
    for n in range(3):
        wf.SINGLE.dispatch(broker, {"x": n})
    worker = register(broker, wf.SINGLE)
    batch = broker.get_steps(worker, 3)

    leases = broker.keep_alive(worker)

    assert sorted((lease.instance_id, lease.step_name, lease.attempt) for lease in leases) == sorted(
        held(batch)
    )
    expiry = {a.instance_id: a.expires_at for a in batch}
    assert all(lease.expires_at >= expiry[lease.instance_id] for lease in leases)

    # once one is reported and one given back, only the last is renewed
    assert broker.report_steps(worker, [ok(batch[0], 0)]) == [None]
    broker.release_steps(worker, [batch[1]])
    assert [(lease.instance_id, lease.attempt) for lease in broker.keep_alive(worker)] == [
        (batch[2].instance_id, 1)
    ]


# -- report_steps ----------------------------------------------------------------------------------
def test_report_steps_accepts_a_batch_of_successes_and_finishes_the_instances(broker):
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in (1, 2, 3)]
    worker = register(broker, wf.SINGLE)
    batch = broker.get_steps(worker, 3)

    outcomes = broker.report_steps(worker, [ok(a, 2 * a.payload["workflow_inputs"]["x"]) for a in batch])

    assert outcomes == [None, None, None]
    for instance_id, x in zip(ids, (1, 2, 3), strict=True):
        info = broker.get_instance(instance_id)
        assert (info.status, info.result, info.step("double").attempt) == (Status.SUCCEEDED, 2 * x, 1)
    assert broker.keep_alive(worker) == []


def test_report_steps_queues_successors_with_the_predecessor_results(broker):
    inputs = {wf.SEQUENCE.dispatch(broker, {"x": n}): n for n in (1, 2, 3)}
    worker = register(broker, wf.SEQUENCE)
    firsts = broker.get_steps(worker, 5)
    assert {(a.instance_id, a.step_name) for a in firsts} == {(i, "first") for i in inputs}

    assert broker.report_steps(worker, [ok(a, inputs[a.instance_id] + 1) for a in firsts]) == [None] * 3

    for instance_id in inputs:
        assert states(broker.get_instance(instance_id)) == {
            "first": Status.SUCCEEDED,
            "second": Status.QUEUED,
        }
    seconds = broker.get_steps(worker, 5)
    assert sorted(a.instance_id for a in seconds) == sorted(inputs)
    for a in seconds:
        assert (a.step_name, a.attempt) == ("second", 1)
        assert a.payload["results"] == {"first": inputs[a.instance_id] + 1}
    assert (
        broker.report_steps(worker, [ok(a, a.payload["results"]["first"] * 10) for a in seconds])
        == [None] * 3
    )
    for instance_id, x in inputs.items():
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, (x + 1) * 10)


def test_a_mixed_batch_reports_each_outcome_in_order_and_replays_cleanly(broker):
    good = wf.SINGLE.dispatch(broker, {"x": 1})
    bad = wf.SEQUENCE.dispatch(broker, {"x": 2})
    stale = wf.SINGLE.dispatch(broker, {"x": 3})
    worker = register(broker, wf.SINGLE, wf.SEQUENCE)
    a, b, c = broker.get_steps(worker, 3)
    assert [(x.instance_id, x.step_name) for x in (a, b, c)] == [
        (good, "double"),
        (bad, "first"),
        (stale, "double"),
    ]
    reports = [ok(a, 2), failed(b, "ValueError: no good"), ok(c, 6, attempt=c.attempt + 1)]

    outcomes = broker.report_steps(worker, reports)

    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], LeaseLost)
    assert (broker.get_instance(good).status, broker.get_instance(good).result) == (Status.SUCCEEDED, 2)
    info = broker.get_instance(bad)
    assert (info.step("first").state, info.step("first").error) == (Status.FAILED, "ValueError: no good")
    assert info.step("second").state is Status.CANCELLED
    assert info.status is Status.FAILED and "first" in info.error
    assert step_of(broker, stale, "double") == (Status.RUNNING, 1, worker)

    before = {i: (broker.get_instance(i), trail(broker, i)) for i in (good, bad, stale)}
    again = broker.report_steps(worker, reports)
    assert again[:2] == [None, None] and isinstance(again[2], LeaseLost)
    assert {i: (broker.get_instance(i), trail(broker, i)) for i in (good, bad, stale)} == before

    changed = broker.report_steps(worker, [ok(a, 99), ok(c, 6)])
    assert isinstance(changed[0], ReportConflict) and changed[1] is None
    assert broker.get_instance(good).result == 2
    assert (broker.get_instance(stale).status, broker.get_instance(stale).result) == (Status.SUCCEEDED, 6)


# -- release_steps ---------------------------------------------------------------------------------
def test_released_steps_are_queued_at_once_and_another_worker_runs_them(broker):
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in (1, 2, 3)]
    releasing, other = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    kept, *given_back = broker.get_steps(releasing, 3)

    broker.release_steps(releasing, given_back)

    for instance_id in ids[1:]:  # given back unstarted: not an execution
        assert step_of(broker, instance_id, "double") == (Status.QUEUED, 0, None)
        assert broker.get_instance(instance_id).step("double").max_attempts == 3
        assert ("released", "double") in trail(broker, instance_id)
    retaken = broker.get_steps(other, 5)
    assert sorted(held(retaken)) == sorted((i, "double", 2) for i in ids[1:])
    late = broker.report_steps(releasing, [ok(kept, 2), *(ok(a, 0) for a in given_back)])
    assert late[0] is None and all(isinstance(o, LeaseLost) for o in late[1:])
    assert (
        broker.report_steps(other, [ok(a, 2 * a.payload["workflow_inputs"]["x"]) for a in retaken])
        == [None] * 2
    )
    assert [broker.get_instance(i).result for i in ids] == [2, 4, 6]
    assert all(broker.get_instance(i).status is Status.SUCCEEDED for i in ids)


def test_a_released_step_keeps_its_full_attempt_budget(make_broker):
    """Three attempts are allowed; a release does not count, so two expiries later a fourth claim remains."""
    broker = make_broker(lease_seconds=LEASE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 4})
    worker = register(broker, wf.SINGLE)
    broker.release_steps(worker, broker.get_steps(worker, 2))

    attempts = []
    for _ in range(2):
        attempts += [a.attempt for a in broker.get_steps(worker, 2)]
        time.sleep(PAST_LEASE)
    (last,) = broker.get_steps(worker, 2)

    assert [*attempts, last.attempt] == [2, 3, 4]  # claims (the fencing token) only grow
    assert broker.report_steps(worker, [ok(last, 8)]) == [None]
    info = broker.get_instance(instance_id)
    # three executions of the three allowed: the release was not one (it used to show 4/4)
    assert (info.status, info.result, info.step("double").attempt) == (Status.SUCCEEDED, 8, 3)
    assert info.step("double").max_attempts == 3


def test_releasing_a_step_no_longer_held_changes_nothing(make_broker):
    """Reported, or expired and taken over by another worker: the release is left alone.

    The rescuer registers only once the lease has lapsed, and the lease is 1 s: registered at the
    start with a 0.3 s lease, a loaded machine once kept it silent for more than twice the lease
    before its claim, which the broker refused (WorkerExpired: listed dead) as it must.
    """
    lease = 1.0
    broker = make_broker(lease_seconds=lease)
    reported, lost = (wf.SINGLE.dispatch(broker, {"x": n}) for n in (1, 2))
    worker = register(broker, wf.SINGLE)
    done, expired = broker.get_steps(worker, 2)
    assert broker.report_steps(worker, [ok(done, 2)]) == [None]
    time.sleep(1.5 * lease)  # the lease of ``expired`` lapses
    rescuer = register(broker, wf.SINGLE)
    (taken,) = broker.get_steps(rescuer, 2)
    assert held([taken]) == [(lost, "double", 2)]
    before = {i: (broker.get_instance(i), trail(broker, i)) for i in (reported, lost)}

    broker.release_steps(worker, [done, expired])

    assert {i: (broker.get_instance(i), trail(broker, i)) for i in (reported, lost)} == before
    assert broker.report_steps(rescuer, [ok(taken, 4)]) == [None]
    assert broker.get_instance(lost).result == 4


# -- the engine ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [1, 4])
def test_an_engine_drains_a_mix_of_workflows_with_the_same_outcome_at_any_prefetch(
    broker, make_engine, prefetch
):
    sequences, diamonds, failing = {}, {}, {}
    for x in range(1, 5):
        sequences[x] = wf.SEQUENCE.dispatch(broker, {"x": x})
        if x < 4:
            diamonds[x] = wf.DIAMOND.dispatch(broker, {"x": x})
        if x < 3:
            failing[x] = wf.FAIL_FAST.dispatch(broker, {"x": x})
    engine = make_engine(broker, wf.SEQUENCE, wf.DIAMOND, wf.FAIL_FAST, prefetch=prefetch)

    assert engine.work() == 4 * 2 + 3 * 4 + 2 * 3

    for x, instance_id in sequences.items():
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, (x + 1) * 10)
    for x, instance_id in diamonds.items():
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, [x + 1, x + 2])
    for x, instance_id in failing.items():
        info = broker.get_instance(instance_id)
        assert states(info) == wf.FAIL_FAST_STATES
        assert info.status is Status.FAILED
        assert (info.step("independent").result, info.step("boom").attempt) == (x + 1, 1)
        assert f"ValueError: boom on {x}" in info.step("boom").error
    everything = [*sequences.values(), *diamonds.values(), *failing.values()]
    assert all(s.attempt in (0, 1) for i in everything for s in broker.get_instance(i).steps)
    assert wf.CALLS.snapshot() == {
        "first": 4, "second": 4, "start": 3, "left": 3, "right": 3, "join": 3, "boom": 2, "independent": 2
    }  # fmt: skip


def test_two_prefetching_engines_run_every_step_exactly_once(broker, make_engine):
    instances = {x: wf.FAN_OUT.dispatch(broker, {"x": x}) for x in range(5)}
    engines = [make_engine(broker, wf.FAN_OUT, prefetch=3) for _ in range(2)]
    ran: list[int] = []

    threads = [threading.Thread(target=lambda e=e: ran.append(e.work())) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sum(ran) == len(instances) * (wf.FAN_OUT_WIDTH + 2)
    for x, instance_id in instances.items():
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, f"gathered {x}")
        assert all(step.attempt == 1 for step in info.steps)
    assert set(wf.CALLS.snapshot().values()) == {1}
    assert len(wf.CALLS.snapshot()) == len(instances) * (wf.FAN_OUT_WIDTH + 2)


def test_work_with_max_steps_runs_that_many_and_leaves_nothing_running(broker, make_engine):
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(6)]
    engine = make_engine(broker, wf.SINGLE, prefetch=4)

    assert engine.work(max_steps=3) == 3

    assert [broker.get_instance(i).result for i in ids[:3]] == [0, 2, 4]
    assert [states(broker.get_instance(i)) for i in ids[3:]] == [{"double": Status.QUEUED}] * 3
    assert broker.keep_alive(engine.worker_id) == []
    assert engine.work() == 3
    assert [broker.get_instance(i).result for i in ids] == [0, 2, 4, 6, 8, 10]


# A step that asks the engine running it to stop (the engine is set by the test).
STOPPING: dict[str, ProcessEngine] = {}
STOP_AT = 1


class StopsTheEngine(Step):
    def run_step(self, x: int) -> int:
        wf.CALLS.hit(("stopper", x))
        if x == STOP_AT:
            STOPPING["engine"].stop()
        return 2 * x


STOPPER = Workflow(
    outputs=[StopsTheEngine(name="stopper")], workflow_id="contract-prefetch-stopper", version="1"
)


def test_stop_during_a_step_reports_it_and_gives_back_the_steps_not_started(broker, make_engine):
    ids = [STOPPER.dispatch(broker, {"x": x}) for x in range(6)]
    engine = STOPPING["engine"] = make_engine(broker, STOPPER, prefetch=4)

    assert engine.work() == 2

    assert [broker.get_instance(i).result for i in ids[:2]] == [0, 2]
    assert all(broker.get_instance(i).status is Status.SUCCEEDED for i in ids[:2])
    for instance_id in ids[2:4]:  # prefetched, not started: given back, no execution counted
        assert step_of(broker, instance_id, "stopper") == (Status.QUEUED, 0, None)
        assert ("released", "stopper") in trail(broker, instance_id)
    for instance_id in ids[4:]:  # never claimed
        assert broker.get_instance(instance_id).step("stopper").state is Status.QUEUED
    assert broker.keep_alive(engine.worker_id) == []

    assert engine.work() == 4
    for x, instance_id in enumerate(ids):
        info = broker.get_instance(instance_id)
        assert (info.status, info.result) == (Status.SUCCEEDED, 2 * x)
    # each ran once: the claims given back are not executions
    assert [broker.get_instance(i).step("stopper").attempt for i in ids] == [1] * 6
    assert wf.CALLS.snapshot() == {("stopper", x): 1 for x in range(6)}


# A step that holds the engine until the test has looked at the database.
SLOW_AT = 1
SLOW_STEP_STARTED = threading.Event()
SLOW_STEP_MAY_END = threading.Event()


class WaitsWhenTold(Step):
    def run_step(self, x: int) -> int:
        if x == SLOW_AT:
            SLOW_STEP_STARTED.set()
            assert SLOW_STEP_MAY_END.wait(30), "the test never let the slow step end"
        return 10 * x


WAITER = Workflow(outputs=[WaitsWhenTold(name="waiter")], workflow_id="contract-prefetch-waiter", version="1")


def test_a_finished_step_is_reported_while_a_long_one_of_its_batch_still_runs(broker, make_engine):
    """Reports wait for the rest of the batch at most REPORT_FLUSH_SECONDS, not for a long step."""
    SLOW_STEP_STARTED.clear()
    SLOW_STEP_MAY_END.clear()
    ids = [WAITER.dispatch(broker, {"x": x}) for x in range(2)]
    engine = make_engine(broker, WAITER, prefetch=2)
    worker = threading.Thread(target=engine.work, daemon=True)
    worker.start()
    try:
        assert SLOW_STEP_STARTED.wait(30)
        deadline = time.monotonic() + 10
        while broker.get_instance(ids[0]).status is not Status.SUCCEEDED and time.monotonic() < deadline:
            time.sleep(0.01)
        first = broker.get_instance(ids[0])
        assert (first.status, first.result) == (Status.SUCCEEDED, 0), "the report waited for the slow step"
        assert broker.get_instance(ids[1]).step("waiter").state is Status.RUNNING
    finally:
        SLOW_STEP_MAY_END.set()
        worker.join(30)
    assert not worker.is_alive()
    assert broker.get_instance(ids[1]).result == 10
