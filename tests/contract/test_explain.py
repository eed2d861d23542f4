"""``explain_instance`` (issue 11): why each unfinished step is not running now, or that it is.

One explanation per PENDING, QUEUED or RUNNING step, in workflow order,
with a reason code and a detail naming what it waits for: predecessors,
a time, the holders of a limit, the workflow and queue no worker serves,
the worker and lease of a running step.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fuseline import Status
from fuseline.broker import Reason
from fuseline.errors import UnknownInstance

from . import scheduled as sc
from . import workflows as wf
from .support import UNKNOWN_IDS, claim, register, report, succeed
from .timing import time_after

#: How far a time shown may be from the one expected (clock reads, a slow machine).
TOLERANCE = timedelta(seconds=30)


def explained(broker, instance_id: str) -> dict[str, tuple[Status, str, str]]:
    return {e.step: (e.state, e.reason, e.detail) for e in broker.explain_instance(instance_id)}


def about(when: datetime, seconds: float) -> bool:
    return abs(when - (datetime.now(timezone.utc) + timedelta(seconds=seconds))) < TOLERANCE


def test_pending_steps_are_waiting_for_the_predecessors_not_finished(broker):
    register(broker, wf.DIAMOND)
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})

    found = explained(broker, instance_id)

    assert list(found) == ["start", "left", "right", "join"]
    assert found["left"][:2] == (Status.PENDING, Reason.WAITING)
    assert "start" in found["left"][2]
    state, reason, detail = found["join"]
    assert (state, reason) == (Status.PENDING, Reason.WAITING)
    assert "left" in detail and "right" in detail


def test_only_unfinished_steps_are_explained_in_workflow_order(broker):
    worker = register(broker, wf.DIAMOND)
    instance_id = wf.DIAMOND.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    succeed(broker, worker, claim(broker, worker), 2)  # left

    found = explained(broker, instance_id)

    assert list(found) == ["right", "join"]
    assert found["join"][1] == Reason.WAITING
    assert "right" in found["join"][2] and "left" not in found["join"][2]


def test_a_step_before_its_dispatch_delay_is_delayed_until_its_time(broker):
    register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1}, delay=600.0)

    state, reason, detail = explained(broker, instance_id)["double"]

    assert (state, reason) == (Status.QUEUED, Reason.DELAYED)
    assert about(time_after("until ", detail), 600.0)


def test_a_step_waiting_for_a_policy_retry_names_the_retry_its_time_and_the_last_error(broker):
    worker = register(broker, sc.RETRY_LATER)
    instance_id = sc.RETRY_LATER.dispatch(broker, {"x": 1})
    error = "ValueError: the service said no\nTraceback (innermost 1 frames):\n  File x"
    broker.report_step(worker, report(claim(broker, worker), Status.FAILED, error=error))

    state, reason, detail = explained(broker, instance_id)["fragile"]

    assert (state, reason) == (Status.QUEUED, Reason.RETRY_SCHEDULED)
    assert detail.startswith("retry 1 of 2 at ")
    assert about(time_after(" at ", detail), 600.0)
    assert detail.endswith("last error: ValueError: the service said no")


def test_a_sleep_step_is_sleeping_until_its_time(broker):
    register(broker, sc.PAUSED_FIRST)
    instance_id = sc.PAUSED_FIRST.dispatch(broker, {})

    found = explained(broker, instance_id)

    state, reason, detail = found["pause"]
    assert (state, reason) == (Status.QUEUED, Reason.SLEEPING)
    assert about(time_after("until ", detail), sc.PAUSE)
    assert found["after"][1] == Reason.WAITING


def test_a_step_held_back_by_its_concurrency_limit_names_the_steps_holding_it(broker):
    worker = register(broker, sc.LIMITED)
    running = sc.LIMITED.dispatch(broker, {"customer": "a"})
    waiting = sc.LIMITED.dispatch(broker, {"customer": "b"})
    claim(broker, worker)

    state, reason, detail = explained(broker, waiting)["limited"]

    assert (state, reason) == (Status.QUEUED, Reason.CONCURRENCY_LIMIT)
    assert detail.startswith("1/1 running")
    assert f"{running}/limited" in detail


def test_a_first_step_held_back_by_the_workflow_limit_counts_the_instances_in_progress(broker):
    worker = register(broker, sc.ONE_AT_A_TIME)
    sc.ONE_AT_A_TIME.dispatch(broker, {"customer": "a"})
    waiting = sc.ONE_AT_A_TIME.dispatch(broker, {"customer": "b"})
    claim(broker, worker)

    found = explained(broker, waiting)

    assert found["open"] == (Status.QUEUED, Reason.WORKFLOW_CONCURRENCY_LIMIT, "1/1 instances in progress")
    assert found["close"][1] == Reason.WAITING


def test_a_rate_limited_step_is_held_until_the_oldest_start_leaves_the_window(broker):
    worker = register(broker, sc.RATED_PER_CUSTOMER)
    sc.RATED_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    waiting = sc.RATED_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    claim(broker, worker)

    state, reason, detail = explained(broker, waiting)["call"]

    assert (state, reason) == (Status.QUEUED, Reason.RATE_LIMITED)
    assert about(time_after("until ", detail), 600.0)


def test_a_claimable_step_no_live_worker_serves_names_its_workflow_and_queue(broker):
    worker = broker.register_worker([sc.RENDER.to_schema()], queues=["default"])
    instance_id = sc.RENDER.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)

    state, reason, detail = explained(broker, instance_id)["render"]

    assert (state, reason) == (Status.QUEUED, Reason.NO_WORKER)
    assert "contract-render" in detail and "gpu" in detail


def test_a_step_whose_only_worker_stopped_has_no_worker(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    assert explained(broker, instance_id)["double"][1] == Reason.QUEUED

    broker.deregister_worker(worker)

    assert explained(broker, instance_id)["double"][1] == Reason.NO_WORKER


def test_a_claimable_step_a_live_worker_serves_is_queued(broker):
    register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})

    state, reason, _ = explained(broker, instance_id)["double"]

    assert (state, reason) == (Status.QUEUED, Reason.QUEUED)


def test_a_running_step_names_its_worker_host_and_lease(make_broker):
    broker = make_broker(lease_seconds=120.0)
    worker = broker.register_worker([wf.SINGLE.to_schema()], host="explain-host")
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    claim(broker, worker)

    state, reason, detail = explained(broker, instance_id)["double"]

    assert (state, reason) == (Status.RUNNING, Reason.RUNNING)
    assert worker in detail and "explain-host" in detail
    assert about(time_after("lease until ", detail), 120.0)


def test_a_finished_instance_has_nothing_to_explain(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 2)

    assert broker.explain_instance(instance_id) == []


@pytest.mark.parametrize("instance_id", UNKNOWN_IDS)
def test_explaining_an_unknown_instance_raises_unknown_instance(broker, instance_id):
    with pytest.raises(UnknownInstance):
        broker.explain_instance(instance_id)
