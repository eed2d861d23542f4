"""A claim, a worker's success, an instance's success and a dispatch write no history row
(migration 0010 and after); the history still lists them, in order, and ``db verify`` still
sees every claim and every success.

The claim of a running step is on its row; the event that ends the attempt keeps it
(``claimed_at``); a cancel or a repair that takes a running step away records it first.
A SUCCEEDED row holds its success and the claim before it; a retry or a repair that resets
the step records them first, as does a repair that reopens a SUCCEEDED instance for its
success. A claim or a success stored as a row of its own before the upgrade is listed once.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import events
from fuseline.broker.sql.verify import verify
from tests.contract.support import report, succeed
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


def run_all(broker: SqlBroker, worker: str, *, fast: bool = False) -> None:
    """Run every step there is; ``fast``: report as a ProcessEngine does (PostgreSQL's
    one-statement path)."""
    while (assignment := broker.get_step(worker)) is not None:
        if fast:
            broker.report_step(worker, report(assignment, Status.SUCCEEDED, 1, version=assignment.version))
        else:
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
    assert kinds.count("succeeded") == 0
    assert stored == [("queued", "b"), ("queued", "c"), ("queued", "d")]
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
    assert sorted(lines).count(("claimed", "b")) == 1 and len(lines) == len(stored) + 11
    history = broker.instance_events(instance_id)
    assert all(a.at <= b.at for a, b in pairwise(history))
    assert {e.worker_id for e in history if e.kind in ("claimed", "succeeded")} == {worker}
    assert {e.attempt for e in history if e.kind in ("claimed", "succeeded")} == {1}
    for name in "abcd":
        mine = [e.kind for e in history if e.step_name == name and e.kind != "queued"]
        assert mine == ["claimed", "succeeded"], name
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
    assert lines.count(("claimed", "d")) == lines.count(("succeeded", "d")) == 2
    assert lines.count(("succeeded", "a")) == 1  # not reset: its row still holds its success
    assert stored_kinds(broker, instance_id).count(("succeeded", "d")) == 1  # stored by the reset
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


@pytest.mark.parametrize("fast", [False, True], ids=["general", "one-statement"])
def test_a_reset_stores_the_successes_it_erases_dated_when_they_happened(
    broker: SqlBroker, tmp_path: Path, fast: bool
) -> None:
    instance_id, worker = start(broker, tmp_path)
    run_all(broker, worker, fast=fast)
    assert stored_kinds(broker, instance_id).count(("succeeded", "b")) == 0
    before = {e.step_name: e for e in broker.instance_events(instance_id) if e.kind == "succeeded"}
    broker.retry_instance(instance_id, from_step="b", operator="ops")  # resets b and d

    stored = stored_kinds(broker, instance_id)
    assert [s for s in stored if s[0] == "succeeded"] == [("succeeded", "b"), ("succeeded", "d")]
    history = broker.instance_events(instance_id)
    kept = [e for e in history if e.kind == "succeeded"]
    assert [(e.step_name, e.at, e.worker_id, e.attempt) for e in kept] == [
        (n, before[n].at, worker, 1) for n in "abcd"
    ]
    assert [e.kind for e in history if e.step_name == "b"][-2:] == ["repaired", "queued"]
    assert all(a.at <= b.at for a, b in pairwise(history))  # the stored successes at their dates
    run_all(broker, worker, fast=fast)

    lines = listed(broker, instance_id)
    assert lines.count(("succeeded", "b")) == lines.count(("succeeded", "d")) == 2
    assert lines.count(("succeeded", "a")) == lines.count(("succeeded", "c")) == 1
    history = broker.instance_events(instance_id)
    assert [e.attempt for e in history if e.kind == "succeeded"][-2:] == [2, 2]
    assert all(a.at <= b.at for a, b in pairwise(history))
    assert verify(broker.engine) == []


def test_a_retry_lists_once_the_successes_it_does_not_reset(broker: SqlBroker, tmp_path: Path) -> None:
    instance_id, worker = start(broker, tmp_path)
    succeed(broker, worker, broker.get_step(worker), 1)  # a
    held = {s.step_name: s for s in (broker.get_step(worker), broker.get_step(worker))}
    succeed(broker, worker, held["b"], 1)
    broker.report_step(worker, report(held["c"], Status.FAILED, error="boom"))
    assert broker.get_instance(instance_id).status is Status.FAILED
    broker.retry_instance(instance_id)  # c again: a and b keep their successes on their rows
    run_all(broker, worker)

    lines = listed(broker, instance_id)
    assert [lines.count(("succeeded", n)) for n in "abcd"] == [1, 1, 1, 1]
    assert lines.index(("succeeded", "b")) < lines.index(("retried", None)) < lines.index(("succeeded", "c"))
    assert verify(broker.engine) == []


def test_verify_counts_the_success_a_row_holds(broker: SqlBroker, tmp_path: Path) -> None:
    """A second accepted success of a step (a line stored beside the one its row holds) is a
    duplicate, as two stored lines were."""
    instance_id, worker = start(broker, tmp_path)
    succeed(broker, worker, broker.get_step(worker), 1)
    row = step_row(broker.engine, instance_id, "a")
    with broker.engine.begin() as conn:
        conn.execute(
            sa.insert(events).values(
                instance_id=instance_id, at=row.started_at, kind="succeeded", step_name="a", attempt=1
            )
        )
    assert [(v.kind, v.step_name) for v in verify(broker.engine)] == [("duplicate_success", "a")]
