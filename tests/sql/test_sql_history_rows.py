"""A claim, an instance's success and a dispatch write no history row (migration 0010); the
history still lists them, in order, and ``db verify`` still sees every claim.

The claim of a running step is on its row; the event that ends the attempt keeps it
(``claimed_at``); a cancel or a repair that takes a running step away records it first;
a repair that reopens a SUCCEEDED instance records its success first. A claim stored as a
row of its own before the upgrade is listed once.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import sqlalchemy as sa

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import events
from fuseline.broker.sql.verify import verify
from tests.contract.support import succeed
from tests.sql.leases import expire_leases, step_row
from tests.sql.workflows import diamond


def start(broker: SqlBroker, tmp_path: Path) -> tuple[str, str]:
    """A diamond dispatched, and a worker registered for it."""
    schema = diamond.to_schema()
    instance_id = broker.dispatch_workflow(schema, {"log": str(tmp_path / "ledger"), "n": 1})
    return instance_id, broker.register_worker([schema])


def stored_kinds(broker: SqlBroker, instance_id: str) -> list[tuple[str, str | None]]:
    with broker.engine.connect() as conn:
        rows = conn.execute(
            sa.select(events.c.kind, events.c.step_name)
            .where(events.c.instance_id == instance_id)
            .order_by(events.c.id)
        ).all()
    return [(r.kind, r.step_name) for r in rows]


def listed(broker: SqlBroker, instance_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.step_name) for e in broker.instance_events(instance_id)]


def run_all(broker: SqlBroker, worker: str) -> None:
    while (assignment := broker.get_step(worker)) is not None:
        succeed(broker, worker, assignment, 1)


def test_a_run_stores_one_row_per_step_and_lists_every_line_in_order(
    broker: SqlBroker, tmp_path: Path
) -> None:
    instance_id, worker = start(broker, tmp_path)
    first = broker.get_step(worker)
    assert listed(broker, instance_id)[-1] == ("claimed", "a")  # from the running step's row
    succeed(broker, worker, first, 1)
    run_all(broker, worker)

    stored = stored_kinds(broker, instance_id)
    kinds = [k for k, _ in stored]
    assert kinds.count("claimed") == kinds.count("instance_succeeded") == kinds.count("dispatched") == 0
    assert kinds.count("succeeded") == 4
    assert ("queued", "a") not in stored  # a root is queued by the dispatch, which writes no row
    lines = listed(broker, instance_id)
    assert lines[:5] == [
        ("dispatched", None),
        ("queued", "a"),
        ("claimed", "a"),
        ("succeeded", "a"),
        ("queued", "b"),
    ]
    assert lines[-3:] == [("claimed", "d"), ("succeeded", "d"), ("instance_succeeded", None)]
    assert sorted(lines).count(("claimed", "b")) == 1 and len(lines) == len(stored) + 7
    history = broker.instance_events(instance_id)
    assert all(a.at <= b.at for a, b in pairwise(history))
    assert {e.worker_id for e in history if e.kind == "claimed"} == {worker}
    assert verify(broker.engine) == []


def test_an_expired_attempt_and_a_cancelled_running_step_keep_their_claims(
    broker: SqlBroker, tmp_path: Path
) -> None:
    instance_id, lost = start(broker, tmp_path)
    taker = broker.register_worker([diamond.to_schema()])
    broker.get_step(lost)
    assert expire_leases(broker.engine) == 1
    assert broker.get_step(taker).attempt == 2  # the claim reaps the expired lease first
    broker.cancel_instance(instance_id)

    history = broker.instance_events(instance_id)
    claims = [(e.attempt, e.worker_id) for e in history if e.kind == "claimed"]
    assert claims == [(1, lost), (2, taker)]
    assert [e.kind for e in history if e.step_name == "a"] == [
        "queued",
        "claimed",
        "lease_expired",
        "claimed",
        "cancelled",
    ]
    assert stored_kinds(broker, instance_id).count(("claimed", "a")) == 1  # taken by the cancel
    assert verify(broker.engine) == []


def test_a_repair_that_reopens_a_succeeded_instance_keeps_its_first_success(
    broker: SqlBroker, tmp_path: Path
) -> None:
    instance_id, worker = start(broker, tmp_path)
    run_all(broker, worker)
    broker.retry_instance(instance_id, from_step="d", operator="ops")
    assert listed(broker, instance_id)[-3:] == [
        ("instance_succeeded", None),
        ("repaired", "d"),
        ("queued", "d"),
    ]
    run_all(broker, worker)

    lines = listed(broker, instance_id)
    assert lines.count(("instance_succeeded", None)) == 2 and lines[-1] == ("instance_succeeded", None)
    assert lines.count(("claimed", "d")) == 2
    assert broker.get_instance(instance_id).status is Status.SUCCEEDED
    assert verify(broker.engine) == []


def test_lines_stored_before_the_upgrade_are_listed_once(broker: SqlBroker, tmp_path: Path) -> None:
    instance_id, worker = start(broker, tmp_path)
    held = broker.get_step(worker)
    started_at = step_row(broker.engine, instance_id, "a").started_at
    old_rows = [  # what a dispatch and a claim wrote before migration 0010
        {"kind": "dispatched", "step_name": None, "attempt": None, "worker_id": None},
        {"kind": "queued", "step_name": "a", "attempt": None, "worker_id": None},
        {"kind": "claimed", "step_name": "a", "attempt": 1, "worker_id": worker},
    ]
    with broker.engine.begin() as conn:
        conn.execute(
            sa.insert(events), [{**row, "instance_id": instance_id, "at": started_at} for row in old_rows]
        )
    assert listed(broker, instance_id) == [("dispatched", None), ("queued", "a"), ("claimed", "a")]
    succeed(broker, worker, held, 1)

    assert listed(broker, instance_id)[:5] == [
        ("dispatched", None),
        ("queued", "a"),
        ("claimed", "a"),
        ("succeeded", "a"),
        ("queued", "b"),
    ]
    assert verify(broker.engine) == []
