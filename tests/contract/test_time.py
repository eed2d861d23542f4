"""Time (issue 11): dispatch delays and times, and Sleep steps the broker completes itself.

A delayed instance's first steps are QUEUED at once but claimable only from
their time, on the broker's clock; later steps queue as usual. A Sleep step
is claimable by no worker: its time comes, and the next claim (of any
worker) completes it and moves the instance on.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from fuseline import Status
from fuseline.broker import Dispatch

from . import scheduled as sc
from . import workflows as wf
from .support import claim, register, states, succeed, trail
from .timing import claim_not_before, claim_when_due

PAUSE = sc.PAUSE


def test_a_delayed_instance_is_queued_at_once_but_claimable_only_after_its_delay(broker):
    worker = register(broker, wf.SINGLE)
    started = time.monotonic()
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1}, delay=PAUSE)

    info = broker.get_instance(instance_id)
    assert (info.status, states(info)) == (Status.RUNNING, {"double": Status.QUEUED})
    assignment = claim_not_before(broker, worker, started + PAUSE)
    assert (assignment.instance_id, assignment.step_name) == (instance_id, "double")


def test_an_instance_dispatched_at_a_time_is_claimable_from_that_time_in_any_time_zone(broker):
    worker = register(broker, wf.SINGLE)
    now, started = datetime.now(timezone.utc), time.monotonic()
    at = (now + timedelta(seconds=PAUSE)).astimezone(timezone(timedelta(hours=5, minutes=30)))
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1}, at=at)

    assignment = claim_not_before(broker, worker, started + PAUSE)
    assert assignment.instance_id == instance_id


def test_an_instance_dispatched_at_a_past_time_is_claimable_at_once(broker):
    worker = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 1}, at=datetime.now(timezone.utc) - timedelta(hours=1))

    assert claim(broker, worker).instance_id == instance_id


def test_a_delay_holds_back_only_the_first_steps_of_the_instance(broker):
    worker = register(broker, wf.SEQUENCE)
    started = time.monotonic()
    instance_id = wf.SEQUENCE.dispatch(broker, {"x": 1}, delay=PAUSE)
    first = claim_not_before(broker, worker, started + PAUSE)

    succeed(broker, worker, first, 2)

    second = claim(broker, worker)  # queued by the rules, claimable at once
    assert (second.instance_id, second.step_name) == (instance_id, "second")


def test_a_delayed_instance_does_not_hold_back_instances_dispatched_after_it(broker):
    worker = register(broker, wf.SINGLE)
    wf.SINGLE.dispatch(broker, {"x": 1}, delay=600.0)
    undelayed = wf.SINGLE.dispatch(broker, {"x": 2})

    assert claim(broker, worker).instance_id == undelayed
    assert broker.get_step(worker) is None


def test_each_item_of_dispatch_many_keeps_its_own_delay(broker):
    worker = register(broker, wf.SINGLE)
    later, now = broker.dispatch_many(wf.SINGLE.to_schema(), [Dispatch({"x": 1}, delay=600.0), {"x": 2}])

    assert claim(broker, worker).instance_id == now
    assert broker.get_step(worker) is None
    assert states(broker.get_instance(later)) == {"double": Status.QUEUED}


def test_a_sleep_step_is_claimed_by_no_worker_and_completed_by_the_broker_after_its_seconds(broker):
    worker = register(broker, sc.PAUSED)
    instance_id = sc.PAUSED.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 1)
    queued = time.monotonic()
    assert states(broker.get_instance(instance_id))["pause"] is Status.QUEUED

    after = claim_not_before(broker, worker, queued + PAUSE)

    assert (after.instance_id, after.step_name) == (instance_id, "after")
    pause = broker.get_instance(instance_id).step("pause")
    assert (pause.state, pause.result, pause.attempt, pause.worker_id) == (Status.SUCCEEDED, None, 0, None)
    events = [e for e in broker.instance_events(instance_id) if e.step_name == "pause"]
    assert [(e.kind, e.worker_id) for e in events] == [("queued", None), ("succeeded", None)]


def test_a_sleep_as_first_step_counts_from_the_dispatch(broker):
    worker = register(broker, sc.PAUSED_FIRST)
    dispatched = time.monotonic()
    instance_id = sc.PAUSED_FIRST.dispatch(broker, {})

    after = claim_not_before(broker, worker, dispatched + PAUSE)

    assert (after.instance_id, after.step_name) == (instance_id, "after")
    succeed(broker, worker, after, "done")
    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, "done")


def test_a_sleep_as_first_step_of_an_instance_dispatched_at_a_time_counts_from_that_time(broker):
    worker = register(broker, sc.PAUSED_FIRST)
    now, dispatched = datetime.now(timezone.utc), time.monotonic()
    instance_id = sc.PAUSED_FIRST.dispatch(broker, {}, at=now + timedelta(seconds=PAUSE))

    after = claim_not_before(broker, worker, dispatched + 2 * PAUSE)

    assert (after.instance_id, after.step_name) == (instance_id, "after")


def test_a_cancelled_sleep_is_not_completed_when_its_time_comes(broker):
    worker, other = register(broker, sc.PAUSED_FIRST), register(broker, wf.SINGLE, sc.PAUSED_FIRST)
    instance_id = sc.PAUSED_FIRST.dispatch(broker, {})
    broker.cancel_instance(instance_id)
    marker = wf.SINGLE.dispatch(broker, {"x": 1}, delay=PAUSE)  # claimable once the pause is over

    assert claim_when_due(broker, other).instance_id == marker
    assert broker.get_step(worker) is None
    info = broker.get_instance(instance_id)
    assert (info.status, states(info)) == (
        Status.CANCELLED,
        {"pause": Status.CANCELLED, "after": Status.CANCELLED},
    )
    assert ("succeeded", "pause") not in trail(broker, instance_id)
