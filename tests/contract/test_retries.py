"""Durable retries (issue 11): the broker, not the worker, schedules the retries a RetryPolicy allows.

A FAILED report with retries left puts the step back in the queue after the
policy's delay, with no lease and its error kept; the instance and the
steps after it carry on as if nothing happened. ``attempt`` counts the
executions, ``retries`` the failures retried. Lost workers have a budget of
their own (``max_attempts``), and only failures a worker reports are retried.
"""

from __future__ import annotations

import time

import pytest

from fuseline import Status
from fuseline.errors import LeaseLost, ReportConflict

from . import scheduled as sc
from .support import claim, register, report, states, succeed, trail
from .timing import claim_not_before

#: The claims in these tests are the worker's only heartbeats: a worker is listed dead after twice
#: its lease without one, so a sleep past the lease plus a slow claim (a loaded machine, another
#: test process beside this one) must stay under 2 x LEASE, with room to spare.
LEASE = 1.0
PAST_LEASE = 1.3
ERROR = "ValueError: the service said no\nTraceback (innermost 1 frames):\n  File x, line 1"


def fail(broker, worker_id, assignment, error: str = ERROR) -> None:
    broker.report_step(worker_id, report(assignment, Status.FAILED, error=error))


def test_a_failure_with_retries_left_queues_the_step_again_and_the_instance_carries_on(broker):
    worker, other = register(broker, sc.RETRY_LATER), register(broker, sc.RETRY_LATER)
    instance_id = sc.RETRY_LATER.dispatch(broker, {"x": 1})

    fail(broker, worker, claim(broker, worker))

    info = broker.get_instance(instance_id)
    assert info.status is Status.RUNNING
    assert states(info) == {"fragile": Status.QUEUED, "downstream": Status.PENDING}
    step = info.step("fragile")
    assert (step.attempt, step.retries, step.error, step.worker_id) == (1, 1, ERROR, None)
    assert broker.get_step(other) is None  # the policy's wait has not passed


def test_a_scheduled_retry_is_an_event_that_names_the_attempt_the_worker_and_the_error(broker):
    worker = register(broker, sc.RETRY_LATER)
    instance_id = sc.RETRY_LATER.dispatch(broker, {"x": 1})

    fail(broker, worker, claim(broker, worker))

    assert trail(broker, instance_id)[-2:] == [("claimed", "fragile"), ("retry_scheduled", "fragile")]
    event = broker.instance_events(instance_id)[-1]
    assert (event.attempt, event.worker_id, event.detail) == (1, worker, ERROR)


def test_a_step_waiting_for_its_retry_holds_no_lease(broker):
    worker = register(broker, sc.RETRY_LATER)
    sc.RETRY_LATER.dispatch(broker, {"x": 1})

    fail(broker, worker, claim(broker, worker))

    assert broker.keep_alive(worker) == []
    assert next(w for w in broker.list_workers() if w.worker_id == worker).current_steps == []


def test_a_retry_runs_once_its_wait_is_over_on_whichever_worker_claims_it(broker):
    failing, rescuer = register(broker, sc.RETRY_SOON), register(broker, sc.RETRY_SOON)
    instance_id = sc.RETRY_SOON.dispatch(broker, {"x": 1})
    first = claim(broker, failing)
    fail(broker, failing, first)
    failed_at = time.monotonic()

    second = claim_not_before(broker, rescuer, failed_at + sc.PAUSE)

    assert (second.instance_id, second.step_name, second.attempt) == (instance_id, "fragile", 2)
    assert second.payload == first.payload
    succeed(broker, rescuer, second, 1)
    info = broker.get_instance(instance_id)
    assert states(info) == {"fragile": Status.SUCCEEDED, "downstream": Status.QUEUED}
    step = info.step("fragile")
    assert (step.attempt, step.retries, step.worker_id) == (2, 1, rescuer)


def test_a_step_fails_for_good_once_its_retries_are_used_up(broker):
    worker = register(broker, sc.RETRY_ONCE)
    instance_id = sc.RETRY_ONCE.dispatch(broker, {"x": 1})

    fail(broker, worker, claim(broker, worker), "first failure")
    fail(broker, worker, claim(broker, worker), "second failure")

    info = broker.get_instance(instance_id)
    assert info.status is Status.FAILED
    assert states(info) == {"fragile": Status.FAILED, "downstream": Status.CANCELLED}
    step = info.step("fragile")
    assert (step.attempt, step.retries, step.error) == (2, 1, "second failure")
    assert [kind for kind, _ in trail(broker, instance_id)].count("retry_scheduled") == 1


def test_the_workflow_retry_policy_applies_to_a_step_without_its_own(broker):
    worker = register(broker, sc.WORKFLOW_RETRY)
    instance_id = sc.WORKFLOW_RETRY.dispatch(broker, {})

    fail(broker, worker, claim(broker, worker))

    step = broker.get_instance(instance_id).step("appeal")
    assert (step.state, step.retries) == (Status.QUEUED, 1)


def test_a_result_the_broker_refuses_fails_the_step_without_a_retry(broker):
    worker = register(broker, sc.RETRY_ONCE)
    instance_id = sc.RETRY_ONCE.dispatch(broker, {"x": 1})

    broker.report_step(worker, report(claim(broker, worker), Status.SUCCEEDED, object()))

    step = broker.get_instance(instance_id).step("fragile")
    assert (step.state, step.retries) == (Status.FAILED, 0)
    assert ("retry_scheduled", "fragile") not in trail(broker, instance_id)


def test_a_lease_lost_on_the_last_allowed_attempt_fails_the_step_without_a_policy_retry(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, sc.RETRY_AND_LOSE)
    instance_id = sc.RETRY_AND_LOSE.dispatch(broker, {"x": 1})

    for _ in range(2):  # max_attempts = 2
        claim(broker, worker)
        time.sleep(PAST_LEASE)
    broker.get_step(worker)  # reaps

    step = broker.get_instance(instance_id).step("fragile")
    assert (step.state, step.attempt, step.retries) == (Status.FAILED, 2, 0)
    assert "worker lost" in step.error
    assert ("retry_scheduled", "fragile") not in trail(broker, instance_id)


def test_a_lost_worker_does_not_use_up_a_policy_retry(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, sc.RETRY_AND_LOSE)  # max_attempts = 2, max_retries = 1
    instance_id = sc.RETRY_AND_LOSE.dispatch(broker, {"x": 1})
    claim(broker, worker)
    time.sleep(PAST_LEASE)  # lost: requeued

    fail(broker, worker, claim(broker, worker))  # two executions, yet the policy's retry is granted

    step = broker.get_instance(instance_id).step("fragile")
    assert (step.state, step.attempt, step.retries) == (Status.QUEUED, 2, 1)


def test_a_policy_retry_does_not_use_up_the_lost_worker_budget(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, sc.RETRY_AND_LOSE)  # max_attempts = 2, max_retries = 1
    instance_id = sc.RETRY_AND_LOSE.dispatch(broker, {"x": 1})
    fail(broker, worker, claim(broker, worker))

    claim(broker, worker)
    time.sleep(PAST_LEASE)
    third = claim(broker, worker)  # lost once: requeued, one lost worker left in the budget

    assert third.attempt == 3
    time.sleep(PAST_LEASE)
    broker.get_step(worker)  # lost twice: the budget is spent
    step = broker.get_instance(instance_id).step("fragile")
    assert (step.state, step.attempt, step.retries) == (Status.FAILED, 3, 1)
    assert "worker lost" in step.error


def test_an_exact_replay_of_a_failure_that_scheduled_a_retry_changes_nothing(broker):
    worker = register(broker, sc.RETRY_LATER)
    instance_id = sc.RETRY_LATER.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)
    fail(broker, worker, assignment)
    before = (broker.get_instance(instance_id), trail(broker, instance_id))

    fail(broker, worker, assignment)

    assert (broker.get_instance(instance_id), trail(broker, instance_id)) == before


@pytest.mark.parametrize("state", [Status.SUCCEEDED, Status.SKIPPED])
def test_a_late_success_for_an_attempt_that_scheduled_a_retry_is_refused(broker, state):
    worker = register(broker, sc.RETRY_LATER)
    instance_id = sc.RETRY_LATER.dispatch(broker, {"x": 1})
    assignment = claim(broker, worker)
    fail(broker, worker, assignment)
    before = broker.get_instance(instance_id)

    with pytest.raises((LeaseLost, ReportConflict)):
        broker.report_step(worker, report(assignment, state, 1))

    assert broker.get_instance(instance_id) == before
