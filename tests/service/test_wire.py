"""The records and errors that cross the wire come back equal, as their own classes."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from fuseline import errors
from fuseline.broker.base import InstanceInfo, Lease, StepAssignment, StepInfo
from fuseline.broker.dispatching import Dispatch
from fuseline.broker.repairs import RepairAction, RepairPlan, StepChange
from fuseline.broker.schedules import ScheduleInfo, ScheduleSpec
from fuseline.service import wire
from fuseline.service.hub import WorkHub
from fuseline.states import Status

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)


def test_records_round_trip_with_times_states_and_nested_records() -> None:
    step = StepInfo(
        "b", Status.FAILED, 2, {"x": [1, 2]}, "boom", "w1", NOW, NOW + timedelta(seconds=3), retries=1
    )
    info = InstanceInfo(
        "i1", "wf", "1", Status.RUNNING, {"n": 1}, None, None, NOW, None, [step], key="k", priority=5,
        parent_instance_id="p", parent_step="child",
    )  # fmt: skip
    back = wire.decode(InstanceInfo, wire.encode(info))
    assert back == info
    assert isinstance(back.steps[0].state, Status) and isinstance(back.created_at, datetime)

    assignment = StepAssignment("wf", "i1", "a", {"results": {}}, NOW, NOW + timedelta(seconds=30), 3, "2")
    assert wire.decode(StepAssignment, wire.encode(assignment)) == assignment
    lease = Lease("i1", "a", 3, NOW)
    assert wire.decode_list(Lease, wire.encode([lease])) == [lease]


def test_plans_and_schedules_round_trip() -> None:
    plan = RepairPlan(
        RepairAction.SKIP, "i1", "b", "ana", Status.FAILED, Status.RUNNING,
        (StepChange("b", Status.FAILED, Status.SKIPPED),), ("c",),
    )  # fmt: skip
    assert wire.decode(RepairPlan, wire.encode(plan)) == plan
    spec = ScheduleSpec.of(cron="30 2 * * *", timezone="Europe/Oslo")
    schedule = ScheduleInfo("nightly", "wf", "1", spec, {"a": 1}, False, NOW, NOW, None, None)
    assert wire.decode(ScheduleInfo, wire.encode(schedule)) == schedule


def test_dispatch_options_round_trip() -> None:
    dispatch = Dispatch({"a": 1}, None, NOW, "key-1", 7)
    assert wire.decode_dispatch(wire.encode_dispatch(dispatch)) == dispatch


@pytest.mark.parametrize(
    "error",
    [
        errors.LeaseLost("i1", "a", "the lease expired"),
        errors.UnknownInstance("i9"),
        errors.KeyConflict("wf", "k", "i2"),
        errors.SignalConflict("i1", "approve"),
        errors.ResultTooLarge("a", 2000, 1000),
        errors.ServiceUnavailable("the server restarts"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_come_back_as_their_class_with_message_and_attributes(error: errors.FuselineError) -> None:
    back = wire.decode_error(wire.encode_error(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert {k: v for k, v in vars(back).items()} == {k: v for k, v in vars(error).items()}


def test_an_unknown_error_type_becomes_a_plain_fuseline_error() -> None:
    back = wire.decode_error({"type": "NoSuchError", "message": "odd", "fields": {}})
    assert type(back) is errors.FuselineError and str(back) == "odd"


def test_the_hub_answers_waits_when_work_is_announced_and_not_before() -> None:
    """One listening thread wakes every waiter; a waiter that missed an announcement (its
    generation is behind) is answered at once; without announcements a wait times out."""
    announce = asyncio.Event()

    async def scenario() -> tuple[bool, bool, bool, bool]:
        loop = asyncio.get_running_loop()
        pending: list[bool] = []

        def wait_for_work(timeout: float) -> bool:
            # the listening thread: True once the test announces work, then quiet again
            fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(announce.wait(), timeout), loop)
            try:
                fut.result()
            except (TimeoutError, asyncio.TimeoutError):
                return False
            if pending:
                return False
            pending.append(True)
            return True

        hub = WorkHub(wait_for_work)
        hub.start(loop)
        first = await hub.wait(None, 5.0)  # a first wait answers at once
        quiet = await hub.wait(hub.generation, 0.2)  # nothing announced: times out
        since = hub.generation
        waiters = [asyncio.create_task(hub.wait(since, 5.0)) for _ in range(3)]
        await asyncio.sleep(0.05)
        announce.set()
        woken = all(await asyncio.gather(*waiters))
        late = await hub.wait(since, 5.0)  # behind the generation: answered at once
        hub.stop()
        return first, quiet, woken, late

    first, quiet, woken, late = asyncio.run(scenario())
    assert first is True
    assert quiet is False
    assert woken is True
    assert late is True


def test_one_new_step_wakes_one_waiting_claimer_not_all_of_them() -> None:
    """Five idle workers wait by claiming; one step arrives with one announcement: one worker
    gets it, and the chain of wake-ups stops at the first claim that finds nothing, instead of
    five claims racing for one step."""

    async def scenario() -> tuple[list[list[str]], int]:
        hub = WorkHub(lambda timeout: False)
        queue: list[str] = []
        claims = 0

        async def claim() -> list[str]:
            nonlocal claims
            claims += 1
            return [queue.pop()] if queue else []

        waiting = [asyncio.create_task(hub.claim_or_wait(claim, 1.0)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert claims == 5  # each claimed once, found nothing, and waits
        queue.append("step")
        hub._wake()  # what the listening thread schedules on a notification
        results = await asyncio.gather(*waiting)
        return results, claims - 5

    results, claims_after = asyncio.run(scenario())
    assert sorted(results) == [[], [], [], [], ["step"]]
    assert claims_after <= 3, f"{claims_after} claims for one step"
