"""Leases: expiry, the attempt limit, heartbeats, and workers leaving.

Leases here are 1 s and waits 1.2 s: long enough to be unambiguous on a
loaded machine and a real database, short enough to keep the suite fast.
"""

from __future__ import annotations

import time

import pytest

from fuseline import Status
from fuseline.errors import LeaseLost, UnknownWorker

from . import workflows as wf
from .support import UNKNOWN_IDS, claim, register, report, states, succeed, trail

#: Short, but with room for a worker's calls through fuseline server on a busy machine: a
#: worker not heard from for 2 x LEASE is dead, and the tests register, dispatch and claim
#: before sleeping PAST_LEASE, so a stall of the machine up to 0.8 s is absorbed.
LEASE = 1.0
PAST_LEASE = 1.2


def test_an_expired_lease_queues_the_step_again_with_the_next_attempt(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    lost, rescuer = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    first = claim(broker, lost)

    time.sleep(PAST_LEASE)
    second = claim(broker, rescuer)

    assert (second.instance_id, second.step_name) == (instance_id, "double")
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.payload == first.payload
    step = broker.get_instance(instance_id).step("double")
    assert (step.state, step.attempt, step.worker_id) == (Status.RUNNING, 2, rescuer)


def test_stale_report_after_lease_expiry_is_rejected_and_changes_nothing(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    lost, rescuer = register(broker, wf.SEQUENCE), register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})
    first = claim(broker, lost)
    time.sleep(PAST_LEASE)
    second = claim(broker, rescuer)
    before = broker.get_instance(instance_id)

    with pytest.raises(LeaseLost):
        succeed(broker, lost, first, "from the lost worker")
    with pytest.raises(LeaseLost):
        broker.report_step(lost, report(first, Status.SUCCEEDED, "no attempt", attempt=None))

    assert broker.get_instance(instance_id) == before
    succeed(broker, rescuer, second, 2)
    info = broker.get_instance(instance_id)
    assert (info.step("first").state, info.step("first").result) == (Status.SUCCEEDED, 2)
    assert info.step("second").state is Status.QUEUED


def test_a_report_within_the_lease_is_accepted_even_after_time_has_passed(make_broker):
    broker = make_broker(lease_seconds=2.0)
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)

    time.sleep(0.1)
    succeed(broker, worker, assignment, 2)

    assert broker.get_instance(instance_id).status is Status.SUCCEEDED


def test_a_step_past_its_default_three_claims_fails_with_worker_lost(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, wf.SEQUENCE)
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1})

    attempts = []
    for _ in range(3):
        attempts.append(claim(broker, worker).attempt)
        time.sleep(PAST_LEASE)
    assert broker.get_step(worker) is None

    assert attempts == [1, 2, 3]
    info = broker.get_instance(instance_id)
    first = info.step("first")
    assert (first.state, first.attempt, first.max_attempts) == (Status.FAILED, 3, 3)
    assert "worker lost" in first.error
    assert info.step("second").state is Status.CANCELLED
    assert info.status is Status.FAILED
    assert "first" in info.error


def test_a_step_honours_its_own_max_attempts(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, wf.ONE_SHOT)
    instance_id = wf.ONE_SHOT.dispatch(broker, {})
    assert broker.get_instance(instance_id).step("one_shot").max_attempts == 1

    claim(broker, worker)
    time.sleep(PAST_LEASE)
    assert broker.get_step(worker) is None

    info = broker.get_instance(instance_id)
    assert info.step("one_shot").state is Status.FAILED
    assert "worker lost" in info.step("one_shot").error
    assert info.status is Status.FAILED


def test_retrying_an_instance_after_worker_lost_gives_the_step_a_fresh_attempt_budget(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, wf.ONE_SHOT)
    instance_id = wf.ONE_SHOT.dispatch(broker, {})
    lost = claim(broker, worker)
    time.sleep(PAST_LEASE)
    assert broker.get_step(worker) is None
    assert broker.get_instance(instance_id).status is Status.FAILED

    broker.retry_instance(instance_id)
    again = claim(broker, worker)

    assert again.attempt > lost.attempt
    succeed(broker, worker, again, "shot")
    info = broker.get_instance(instance_id)
    assert (info.status, info.result, info.error) == (Status.SUCCEEDED, "shot", None)


def test_keep_alive_extends_the_lease_so_nobody_else_can_claim_the_step(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    holder, other = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, holder)

    deadline = time.monotonic() + 2 * LEASE
    while time.monotonic() < deadline:
        time.sleep(0.1)
        leases = broker.keep_alive(holder)
        assert [(lease.instance_id, lease.step_name, lease.attempt) for lease in leases] == [
            (instance_id, "double", 1)
        ]
        assert broker.get_step(other) is None

    succeed(broker, holder, assignment, 2)
    info = broker.get_instance(instance_id)
    assert (info.status, info.step("double").attempt) == (Status.SUCCEEDED, 1)


def test_keep_alive_returns_a_lease_expiring_after_the_heartbeat(make_broker):
    broker = make_broker(lease_seconds=30.0)
    worker = register(broker, wf.SINGLE)
    wf.SINGLE.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)

    (lease,) = broker.keep_alive(worker)

    assert lease.expires_at >= assignment.expires_at
    assert abs((lease.expires_at - assignment.assigned_at).total_seconds() - 30.0) < 5.0


def test_keep_alive_of_an_idle_worker_returns_no_leases(broker):
    worker = register(broker, wf.SINGLE)
    wf.SINGLE.dispatch(broker, {"x": 1})

    assert broker.keep_alive(worker) == []


def test_keep_alive_no_longer_lists_a_step_taken_over_by_another_worker(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    lost, rescuer = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    wf.SINGLE.dispatch(broker, {"x": 1})
    claim(broker, lost)
    time.sleep(PAST_LEASE)
    claim(broker, rescuer)

    assert broker.keep_alive(lost) == []
    assert [lease.attempt for lease in broker.keep_alive(rescuer)] == [2]


@pytest.mark.parametrize("worker_id", UNKNOWN_IDS, ids=["text", "uuid"])
def test_keep_alive_of_an_unknown_worker_raises_unknown_worker(broker, worker_id):
    with pytest.raises(UnknownWorker):
        broker.keep_alive(worker_id)


def test_deregister_worker_queues_again_the_step_it_held(broker):
    leaving, staying = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    first = claim(broker, leaving)

    broker.deregister_worker(leaving)

    assert states(broker.get_instance(instance_id)) == {"double": Status.QUEUED}
    second = claim(broker, staying)
    assert (second.step_name, second.attempt) == ("double", 2)
    with pytest.raises(LeaseLost):
        succeed(broker, leaving, first, "late")
    succeed(broker, staying, second, 2)
    assert broker.get_instance(instance_id).result == 2


@pytest.mark.parametrize("worker_id", UNKNOWN_IDS, ids=["text", "uuid"])
def test_deregister_of_an_unknown_worker_raises_unknown_worker(broker, worker_id):
    with pytest.raises(UnknownWorker):
        broker.deregister_worker(worker_id)


def test_a_step_released_by_a_stopping_worker_does_not_use_up_an_attempt(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    leaving, worker = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    claim(broker, leaving)
    broker.deregister_worker(leaving)

    # two expired leases after the release: with three attempts allowed, a fourth claim remains
    attempts = [claim(broker, worker).attempt]
    time.sleep(PAST_LEASE)
    attempts.append(claim(broker, worker).attempt)
    time.sleep(PAST_LEASE)
    last = claim(broker, worker)
    attempts.append(last.attempt)

    assert attempts == [2, 3, 4]
    succeed(broker, worker, last, 2)
    assert broker.get_instance(instance_id).status is Status.SUCCEEDED


def test_lease_expiry_is_recorded_in_the_instance_history(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    lost, rescuer = register(broker, wf.SINGLE), register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    claim(broker, lost)
    time.sleep(PAST_LEASE)
    succeed(broker, rescuer, claim(broker, rescuer), 2)

    events = broker.instance_events(instance_id)

    claims = [(e.attempt, e.worker_id) for e in events if e.kind == "claimed"]
    assert claims == [(1, lost), (2, rescuer)]
    assert ("lease_expired", "double") in trail(broker, instance_id)
