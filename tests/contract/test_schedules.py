"""Schedules (issue 12): added, listed, paused, resumed, removed; each due tick fires one instance.

A tick fires when a broker fires schedules: running workers' claims do it
(at most every half second on SqlBroker), ``fire_schedules()`` does it now.
The instance of a tick is keyed ``name@tick``; a tick fired again (a second
worker) names the same instance. After a gap only the latest tick fires.
Ticks come from the wall clock (the database's, on this machine the same),
so the tests wait for them: interval schedules of 1 s keep that short. Tests that
need two broker calls to fall between the same two ticks use 2 s (WINDOW), so a
loaded machine has 1.85 s, not 0.85 s, for the second call.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from fuseline.broker.schedules import ScheduleSpec, tick_key
from fuseline.errors import ScheduleError, UnknownSchedule

from . import workflows as wf
from .support import register

EVERY = 1
#: The interval of tests whose checks must all run before the tick after the one they waited for.
WINDOW = 2
#: How long after a tick the tests look, so a clock read a little behind still sees it due.
MARGIN = 0.15


def now() -> datetime:
    return datetime.now(timezone.utc)


def wait_until(moment: datetime) -> None:
    """Sleep until ``moment`` (plus MARGIN) has passed on this machine's clock."""
    remaining = (moment - now()).total_seconds() + MARGIN
    if remaining > 0:
        time.sleep(remaining)


def clear_of_the_next_tick(every: int) -> None:
    """If the next tick of an ``every`` s schedule is less than half a second away, wait past it,
    so that a schedule added now is certainly not due at the broker call that follows."""
    upcoming = ScheduleSpec(every=every).next_tick(now())
    if (upcoming - now()).total_seconds() < 0.5:
        wait_until(upcoming)


def test_a_schedule_is_listed_with_its_spec_inputs_and_next_fire_time(broker):
    before = now()
    added = broker.add_schedule(
        wf.SINGLE, name="new-year", cron="0 0 1 1 *", timezone="Europe/Oslo", inputs={"x": 3}
    )
    after = now()

    spec = ScheduleSpec(cron="0 0 1 1 *", timezone="Europe/Oslo")
    assert added.next_fire_at in (spec.next_tick(before), spec.next_tick(after))
    assert added.next_fire_at.astimezone(spec.zone).strftime("%m-%d %H:%M") == "01-01 00:00"
    (listed,) = broker.list_schedules()
    assert listed == added
    assert (listed.name, listed.workflow_id, listed.version) == ("new-year", "contract-single", "1")
    assert (listed.spec, listed.inputs, listed.paused) == (spec, {"x": 3}, False)
    assert (listed.last_tick, listed.last_instance_id) == (None, None)


def test_the_name_defaults_to_the_workflow_id_and_schedules_list_by_name(broker):
    broker.add_schedule(wf.SINGLE, every=60, inputs={"x": 1})
    broker.add_schedule(wf.SINGLE.to_schema(), name="a-first", every=3600, inputs={"x": 2})

    assert [s.name for s in broker.list_schedules()] == ["a-first", "contract-single"]
    assert broker.list_schedules()[1].spec == ScheduleSpec(every=60)


def test_a_name_already_taken_is_refused_and_the_first_schedule_stays(broker):
    first = broker.add_schedule(wf.SINGLE, name="nightly", cron="30 2 * * *", inputs={"x": 1})

    with pytest.raises(ScheduleError, match="'nightly' already exists"):
        broker.add_schedule(wf.SINGLE, name="nightly", every=5, inputs={"x": 2})
    assert broker.list_schedules() == [first]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "every day"}, "invalid cron expression"),
        ({"cron": "30 2 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": 0}, "every must be at least 1 second, not 0"),
        ({"every": -5}, "every must be at least 1 second"),
        ({"every": 1.5}, "whole number of seconds"),
        ({"cron": "* * * * *", "every": 60}, "not both"),
        ({}, "give a cron expression"),
        ({"every": 60, "timezone": "Europe/Oslo"}, "cron expressions only"),
        ({"every": 60, "name": ""}, "schedule name must be a non-empty string"),
        ({"every": 60, "name": "x" * 161}, "the limit is 160"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_writes_nothing(broker, options, message):
    with pytest.raises(ScheduleError, match=message):
        broker.add_schedule(wf.SINGLE, inputs={"x": 1}, **options)

    assert broker.list_schedules() == []
    assert broker.list_instances() == []


def test_pause_resume_and_remove(broker):
    broker.add_schedule(wf.SINGLE, name="tick", every=EVERY, inputs={"x": 1})

    paused = broker.pause_schedule("tick")
    assert paused.paused and broker.list_schedules() == [paused]
    assert broker.pause_schedule("tick") == paused  # again: nothing changes
    wait_until(paused.next_fire_at)
    assert broker.fire_schedules() == []  # a paused schedule does not fire

    before = now()
    resumed = broker.resume_schedule("tick")
    # the ticks passed while paused never fire: the next one is after the resume
    assert not resumed.paused and resumed.next_fire_at > before - timedelta(seconds=MARGIN)
    assert broker.list_schedules() == [resumed]

    broker.remove_schedule("tick")
    assert broker.list_schedules() == []
    for operation in (broker.pause_schedule, broker.resume_schedule, broker.remove_schedule):
        with pytest.raises(UnknownSchedule, match="unknown schedule 'tick'"):
            operation("tick")


def test_a_due_tick_fires_exactly_one_instance_keyed_by_schedule_name_and_tick(broker):
    clear_of_the_next_tick(WINDOW)
    added = broker.add_schedule(wf.SINGLE, name="tick", every=WINDOW, inputs={"x": 4})
    assert broker.fire_schedules() == []  # nothing is due yet
    wait_until(added.next_fire_at)

    fired = broker.fire_schedules()
    assert broker.fire_schedules() == []  # the tick fired once

    assert len(fired) == 1
    (schedule,) = broker.list_schedules()
    assert schedule.last_instance_id == fired[0]
    assert schedule.last_tick is not None and schedule.last_tick >= added.next_fire_at
    assert schedule.last_tick.timestamp() % WINDOW == 0
    assert schedule.next_fire_at == schedule.last_tick + timedelta(seconds=WINDOW)
    instance = broker.get_instance(fired[0])
    assert (instance.workflow_id, instance.inputs) == ("contract-single", {"x": 4})
    assert instance.key == tick_key("tick", schedule.last_tick)
    assert instance.key.startswith("tick@") and instance.key.endswith("+00:00")
    assert [i.instance_id for i in broker.list_instances()] == fired


def test_a_tick_fired_by_two_brokers_at_once_has_one_instance(broker_id, make_broker):
    first = make_broker()
    # SqlBrokers on one database share its schedules; a MemoryBroker's are its own.
    second = first if broker_id == "memory" else make_broker()
    added = first.add_schedule(wf.SINGLE, name="tick", every=WINDOW, inputs={"x": 1})
    wait_until(added.next_fire_at)

    fired = first.fire_schedules() + second.fire_schedules()

    assert len(fired) == 1
    assert [i.instance_id for i in second.list_instances()] == fired


def test_after_a_gap_only_the_latest_missed_tick_fires(broker):
    added = broker.add_schedule(wf.SINGLE, name="tick", every=EVERY, inputs={"x": 1})
    missed = added.next_fire_at + timedelta(seconds=2 * EVERY)
    wait_until(missed)  # three ticks passed with nothing firing them

    fired = broker.fire_schedules()
    looked_at = now()

    assert len(fired) == 1
    (schedule,) = broker.list_schedules()
    assert schedule.last_tick is not None and schedule.last_tick >= missed
    assert looked_at - schedule.last_tick < timedelta(seconds=EVERY + MARGIN)
    assert broker.get_instance(fired[0]).key == tick_key("tick", schedule.last_tick)
    assert len(broker.list_instances()) == 1


def test_a_running_worker_fires_due_ticks_when_it_claims(broker):
    worker = register(broker, wf.SINGLE)
    added = broker.add_schedule(wf.SINGLE, name="tick", every=WINDOW, inputs={"x": 5})
    wait_until(added.next_fire_at)

    deadline = time.monotonic() + 10
    assignment = None
    while assignment is None and time.monotonic() < deadline:
        assignment = broker.get_step(worker)  # the claim fires the tick, then claims its step
        time.sleep(0.05)

    assert assignment is not None, "the due tick did not fire within 10 s of claims"
    (schedule,) = broker.list_schedules()
    assert assignment.instance_id == schedule.last_instance_id
    assert assignment.payload["workflow_inputs"] == {"x": 5}


def test_a_tick_whose_key_names_an_instance_with_other_inputs_is_skipped_not_stuck(broker):
    added = broker.add_schedule(wf.SINGLE, name="tick", every=WINDOW, inputs={"x": 1})
    squatter = wf.SINGLE.dispatch(broker, {"x": 99}, key=tick_key("tick", added.next_fire_at))
    wait_until(added.next_fire_at)

    assert broker.fire_schedules() == []

    (schedule,) = broker.list_schedules()
    assert schedule.next_fire_at > added.next_fire_at  # moved on: the next tick fires as usual
    assert schedule.last_instance_id is None
    assert [i.instance_id for i in broker.list_instances()] == [squatter]


def test_removing_a_schedule_keeps_the_instances_it_fired(broker):
    added = broker.add_schedule(wf.SINGLE, name="tick", every=EVERY, inputs={"x": 1})
    wait_until(added.next_fire_at)
    fired = broker.fire_schedules()

    broker.remove_schedule("tick")

    assert [i.instance_id for i in broker.list_instances()] == fired
