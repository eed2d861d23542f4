"""Claims read the queue from a little below the last claim (``ClaimFloors``) and lose nothing below.

A step can become visible below the floor: its queueing transaction
committed late, or a claim of it was rolled back. These tests put one there
(by moving its ``available_at`` back a minute) and check that the hint is in
force (a newer step is claimed first) and that the step is still claimed:
by the rescan of a claim that found nothing above the floor, and by the
periodic full scan even while newer steps keep coming.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import Status, Step, StepReport, Workflow
from fuseline.broker.sql import SqlBroker, claimfloor


class Unit(Step):
    def run_step(self, n: int) -> int:
        return n


UNIT = Workflow(outputs=[Unit()], workflow_id="claim-floor-unit", version="1")


@pytest.fixture
def broker(postgres_url: URL) -> Iterator[SqlBroker]:
    opened = SqlBroker(postgres_url, listen=False)
    yield opened
    opened.close()


def dispatch(broker: SqlBroker, n: int, *, backdated: bool = False) -> str:
    instance_id = broker.dispatch_workflow(UNIT.to_schema(), {"n": n})
    if backdated:  # as if its transaction had committed a minute late
        with broker.engine.begin() as conn:
            moved = conn.execute(
                sa.text(
                    "UPDATE fuseline_steps SET available_at = available_at - interval '60 seconds' "
                    "WHERE instance_id = :instance_id AND state = 'QUEUED'"
                ),
                {"instance_id": instance_id},
            ).rowcount
        assert moved == 1
    return instance_id


def claimed_n(broker: SqlBroker, worker_id: str) -> int | None:
    assignment = broker.get_step(worker_id)
    return None if assignment is None else assignment.payload["workflow_inputs"]["n"]


def test_a_step_below_the_floor_is_claimed_once_nothing_is_queued_above_it(
    broker: SqlBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claimfloor, "RESCAN_WHEN_EMPTY_SECONDS", 0.3)
    monkeypatch.setattr(claimfloor, "FULL_SCAN_SECONDS", 600.0)  # only the empty-queue rescan here
    worker = broker.register_worker([UNIT.to_schema()])
    dispatch(broker, 0)
    assert claimed_n(broker, worker) == 0  # the floor is now just below step 0
    dispatch(broker, 1, backdated=True)
    dispatch(broker, 2)

    assert claimed_n(broker, worker) == 2, "the floor should hide the step queued a minute back"
    time.sleep(0.35)
    assert claimed_n(broker, worker) == 1, "nothing above the floor: the claim must look from the start"
    assert claimed_n(broker, worker) is None


def test_a_step_below_the_floor_waits_at_most_the_full_scan_period(
    broker: SqlBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claimfloor, "FULL_SCAN_SECONDS", 0.3)
    monkeypatch.setattr(claimfloor, "RESCAN_WHEN_EMPTY_SECONDS", 600.0)  # only the periodic scan here
    worker = broker.register_worker([UNIT.to_schema()])
    dispatch(broker, 0)
    assert claimed_n(broker, worker) == 0  # a full scan; the next one is due in 0.3 s
    dispatch(broker, 1, backdated=True)
    dispatch(broker, 2)
    dispatch(broker, 3)

    assert claimed_n(broker, worker) == 2
    time.sleep(0.35)
    assert claimed_n(broker, worker) == 1, "the periodic full scan takes the oldest step first"
    assert claimed_n(broker, worker) == 3


def test_batched_claims_follow_the_floor_too(broker: SqlBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claimfloor, "RESCAN_WHEN_EMPTY_SECONDS", 0.3)
    monkeypatch.setattr(claimfloor, "FULL_SCAN_SECONDS", 600.0)
    worker = broker.register_worker([UNIT.to_schema()])
    dispatch(broker, 0)
    assert [a.payload["workflow_inputs"]["n"] for a in broker.get_steps(worker, 5)] == [0]
    dispatch(broker, 1, backdated=True)
    dispatch(broker, 2)
    dispatch(broker, 3)

    assert [a.payload["workflow_inputs"]["n"] for a in broker.get_steps(worker, 5)] == [2, 3]
    time.sleep(0.35)
    assert [a.payload["workflow_inputs"]["n"] for a in broker.get_steps(worker, 5)] == [1]
    assert broker.get_steps(worker, 5) == []


def test_an_expired_step_keeps_its_place_in_line_and_its_reaper_claims_it_first(
    postgres_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lost work is taken up before the backlog queued after it, though it sits below the floor."""
    monkeypatch.setattr(claimfloor, "FULL_SCAN_SECONDS", 600.0)  # no full scan may find it here
    monkeypatch.setattr(claimfloor, "RESCAN_WHEN_EMPTY_SECONDS", 600.0)
    # ``alive``'s claims are its only heartbeats, and it must not be listed dead (2 x lease): the
    # wait below is 1.3 s of 2, room for a loaded machine's stall
    broker = SqlBroker(postgres_url, lease_seconds=1.0, listen=False)
    try:
        lost, alive = (broker.register_worker([UNIT.to_schema()]) for _ in range(2))
        dispatch(broker, 0, backdated=True)
        assert claimed_n(broker, lost) == 0  # and never reported: its lease runs out
        for n in (1, 2, 3):
            dispatch(broker, n)
        first = broker.get_step(alive)
        assert first is not None and first.payload["workflow_inputs"]["n"] == 1  # the floor is above step 0
        broker.report_step(
            alive, StepReport(first.workflow_id, first.instance_id, first.step_name, Status.SUCCEEDED, 1)
        )
        time.sleep(1.3)  # past the lease ``lost`` holds

        again = broker.get_step(alive)  # reaps step 0, then claims
        assert again is not None
        assert (again.payload["workflow_inputs"]["n"], again.attempt) == (0, 2)
        assert claimed_n(broker, alive) == 2
    finally:
        broker.close()


def test_a_claim_that_started_before_a_lowering_does_not_raise_the_floor_over_the_steps_put_back() -> None:
    """One broker claims on many threads (a server serving many workers): a claim that began
    before the reaper put a step back cannot have seen it, so when it ends it may not lift the
    floor above that step; the first claim that began after the lowering may."""
    from datetime import datetime, timedelta, timezone

    from fuseline.broker.sql.claimfloor import FLOOR_SLACK, ClaimFloors

    key = ("wf", "1", "default")
    old = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)
    new = old + timedelta(minutes=5)
    floors = ClaimFloors()
    floors.follow([(key, 0, old + timedelta(minutes=1))], floors.ticket())

    before = floors.ticket()  # a claim starts...
    floors.lower([(key, old)])  # ...the reaper puts back a step that became available at `old`
    floors.follow([(key, 0, new)], before)  # ...and the claim ends with a newer step
    floors._last_full_scan = float("inf")  # no full scan may hide the outcome: read the floor itself
    assert floors.for_next_claim([key]) == [old - FLOOR_SLACK]

    after = floors.ticket()  # a claim that started after the lowering read from below `old`
    floors.follow([(key, 0, new)], after)
    assert floors.for_next_claim([key]) == [new - FLOOR_SLACK]
