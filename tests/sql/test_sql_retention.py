"""Retention on PostgreSQL and SQLite: what pruning deletes, what it keeps, in what batches.

Instances are made "old" by moving their ``finished_at`` (or a worker's
``stopped_at``) back with SQL; everything else is what real brokers left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import Depends, FunctionStep, Status, SubWorkflow, Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.models import events, instances, signals, steps, workers
from fuseline.broker.sql.retention import BATCH_INSTANCES, PruneCounts, Pruner
from fuseline.broker.sql.verify import verify
from tests.chaos import shape_flows
from tests.contract import shapes
from tests.contract.support import register

DAYS_7 = timedelta(days=7)


def value(x: int) -> int:
    return x


def broken(x: int) -> int:
    raise RuntimeError(f"broken {x}")


one = Workflow(outputs=FunctionStep(value, name="value"), workflow_id="rt-one", version="1")
failing = Workflow(outputs=FunctionStep(broken, name="broken"), workflow_id="rt-failing", version="1")
leaf = Workflow(outputs=FunctionStep(value, name="leaf"), workflow_id="rt-leaf", version="1")
start = FunctionStep(value, name="start")
call = SubWorkflow(leaf, inputs={"x": Depends(start)}, name="call")


def finish(result: int = Depends(call)) -> int:
    return result


#: start -> call (child ``leaf``) -> finish: after the child ends, the parent still has a step.
parent = Workflow(outputs=FunctionStep(finish, name="finish"), workflow_id="rt-parent", version="1")
FLOWS = (one, failing, parent, leaf, shape_flows.mapped)


def backdate(broker: SqlBroker, ids: Sequence[str], days: float = 10, column: str = "finished_at") -> None:
    """Move ``column`` of these instances ``days`` into the past (from now)."""
    _set_time(broker, instances, instances.c.id.in_(list(ids)), column, days)


def _set_time(broker: SqlBroker, table: sa.Table, where: sa.ColumnElement, column: str, days: float) -> None:
    at = datetime.now(timezone.utc) - timedelta(days=days)
    if broker.engine.dialect.name == "sqlite":
        at = at.replace(tzinfo=None)  # stored as UTC text
    with broker.engine.begin() as conn:
        conn.execute(sa.update(table).where(where).values({column: at}))


def count(broker: SqlBroker, table: sa.Table, where: sa.ColumnElement | None = None) -> int:
    statement = sa.select(sa.func.count()).select_from(table)
    with broker.engine.connect() as conn:
        return conn.execute(statement if where is None else statement.where(where)).scalar_one()


def rows_of(broker: SqlBroker, ids: Sequence[str]) -> dict[str, int]:
    """Rows left of these instances, per table."""
    ids = list(ids)
    return {
        "instances": count(broker, instances, instances.c.id.in_(ids)),
        "steps": count(broker, steps, steps.c.instance_id.in_(ids)),
        "events": count(broker, events, events.c.instance_id.in_(ids)),
        "signals": count(broker, signals, signals.c.instance_id.in_(ids)),
    }


def finished(broker: SqlBroker, worker: str, flow: Workflow, n: int) -> list[str]:
    ids = [flow.dispatch(broker, {"x": i}) for i in range(n)]
    shapes.run_all(broker, worker, FLOWS)
    return ids


def test_old_finished_instances_go_with_every_row_and_the_rest_stays(broker: SqlBroker) -> None:
    worker = register(broker, *FLOWS)
    succeeded = finished(broker, worker, one, 3)
    noted = one.dispatch(broker, {"x": 9})
    broker.signal(noted, "note", {"kept": "until the instance goes"})  # a signal nobody waits for
    shapes.run_all(broker, worker, FLOWS)
    failed = finished(broker, worker, failing, 2)
    cancelled = one.dispatch(broker, {"x": 5})
    broker.cancel_instance(cancelled)
    old = [*succeeded, noted, *failed, cancelled]
    assert {broker.get_instance(i).status for i in old} == {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
    recent = finished(broker, worker, one, 2)
    waiting = one.dispatch(broker, {"x": 7})  # RUNNING, never claimed
    backdate(broker, [*old, waiting], column="created_at")
    backdate(broker, old)
    assert rows_of(broker, [noted])["signals"] == 1
    stored_events = rows_of(broker, old)["events"]

    deleted = broker.prune(DAYS_7)

    assert rows_of(broker, old) == {"instances": 0, "steps": 0, "events": 0, "signals": 0}
    assert deleted.instances == len(old)
    assert deleted.signals == 1
    assert deleted.steps == 7 and deleted.events == stored_events > 0
    for kept in (*recent, waiting):
        assert rows_of(broker, [kept])["instances"] == 1
    assert broker.get_instance(waiting).status is Status.RUNNING
    assert verify(broker.engine) == []
    assert broker.prune(DAYS_7) == PruneCounts()  # nothing left to do


def test_a_dry_run_changes_nothing_and_counts_what_prune_then_deletes(broker: SqlBroker) -> None:
    worker = register(broker, *FLOWS)
    old = finished(broker, worker, one, 4)
    parents = [parent.dispatch(broker, {"x": i}) for i in range(2)]
    shapes.run_all(broker, worker, FLOWS)
    children = [broker.get_instance(p).children[0] for p in parents]
    backdate(broker, [*old, *parents, *children])
    before = {name: count(broker, table) for name, table in _TABLES.items()}

    planned = broker.prune(DAYS_7, dry_run=True)

    assert {name: count(broker, table) for name, table in _TABLES.items()} == before
    assert planned.instances == len(old) + 4
    assert broker.prune(DAYS_7) == planned
    assert count(broker, instances) == 0
    assert verify(broker.engine) == []


_TABLES = {"instances": instances, "steps": steps, "events": events, "signals": signals, "workers": workers}


def test_a_finished_child_of_a_running_parent_stays(broker: SqlBroker) -> None:
    worker = register(broker, *FLOWS)
    parent_id = parent.dispatch(broker, {"x": 1})
    shapes.run_all(broker, worker, FLOWS, limit=2)  # start, then the child's leaf: finish waits
    (child_id,) = broker.get_instance(parent_id).children
    assert broker.get_instance(child_id).status is Status.SUCCEEDED
    assert broker.get_instance(parent_id).status is Status.RUNNING
    backdate(broker, [child_id])

    assert broker.prune(DAYS_7, dry_run=True).instances == 0
    assert broker.prune(DAYS_7).instances == 0
    assert rows_of(broker, [child_id])["instances"] == 1
    assert verify(broker.engine) == []


def test_a_finished_parent_of_a_running_child_stays(broker: SqlBroker) -> None:
    worker = register(broker, *FLOWS)
    parent_id = parent.dispatch(broker, {"x": 1})
    shapes.run_all(broker, worker, FLOWS)
    (child_id,) = broker.get_instance(parent_id).children
    backdate(broker, [parent_id])
    # The child made unfinished by hand: a final parent whose child still runs.
    with broker.engine.begin() as conn:
        conn.execute(
            sa.update(instances).where(instances.c.id == child_id).values(status="RUNNING", finished_at=None)
        )

    assert broker.prune(DAYS_7, dry_run=True).instances == 0
    assert broker.prune(DAYS_7).instances == 0
    assert rows_of(broker, [parent_id, child_id])["instances"] == 2


def test_a_recent_child_keeps_its_old_parent_and_an_old_family_goes_children_first(broker: SqlBroker) -> None:
    worker = register(broker, *FLOWS)
    families = [parent.dispatch(broker, {"x": i}) for i in range(2)]
    shapes.run_all(broker, worker, FLOWS)
    children = [broker.get_instance(p).children[0] for p in families]
    backdate(broker, [*families, children[0]])  # the second child finished recently

    assert broker.prune(DAYS_7, dry_run=True).instances == 2
    assert broker.prune(DAYS_7).instances == 2
    assert rows_of(broker, [families[0], children[0]])["instances"] == 0
    assert rows_of(broker, [families[1], children[1]])["instances"] == 2
    assert verify(broker.engine) == []


def test_workers_stopped_or_silent_for_a_day_go_unless_they_hold_a_step(broker: SqlBroker) -> None:
    stopped_long_ago, killed_long_ago, stopped_today, holding = (register(broker, one) for _ in range(4))
    broker.deregister_worker(stopped_long_ago)
    broker.deregister_worker(stopped_today)
    one.dispatch(broker, {"x": 1})
    assert broker.get_step(holding) is not None  # RUNNING, held by ``holding``
    _set_time(broker, workers, workers.c.id == stopped_long_ago, "stopped_at", 2)
    _set_time(broker, workers, workers.c.id.in_([killed_long_ago, holding]), "last_heartbeat", 2)

    assert broker.prune(DAYS_7, dry_run=True).workers == 2
    assert broker.prune(DAYS_7).workers == 2

    with broker.engine.connect() as conn:
        left = set(conn.execute(sa.select(workers.c.id)).scalars())
    assert left == {stopped_today, holding}


def test_each_transaction_deletes_a_bounded_number_of_rows(broker: SqlBroker) -> None:
    worker = register(broker, *FLOWS)
    ids = [shape_flows.mapped.dispatch(broker, {"n": n, "size": 40}) for n in range(3)]
    ids += finished(broker, worker, one, BATCH_INSTANCES + 5)
    shapes.run_all(broker, worker, FLOWS)
    backdate(broker, ids)
    planned = broker.prune(DAYS_7, dry_run=True)
    pruner = Pruner.on(broker.db)
    pruner.rows_per_batch = 100

    sizes, total = [], PruneCounts()
    while (batch := pruner.batch(DAYS_7.total_seconds())).more or batch.deleted.total:
        sizes.append(batch.deleted.total)
        total += batch.deleted
    assert max(sizes) <= 100
    assert len(sizes) > total.total // 100
    assert total == planned
    assert rows_of(broker, ids) == {"instances": 0, "steps": 0, "events": 0, "signals": 0}
    assert verify(broker.engine) == []


def test_workers_prune_as_they_claim_without_being_asked(db_url: str) -> None:
    broker = SqlBroker(db_url, retention=timedelta(seconds=30))  # a pass every 3 s at most
    try:
        worker = register(broker, *FLOWS)
        old = finished(broker, worker, one, BATCH_INSTANCES + 10)  # more than one batch
        recent = finished(broker, worker, one, 2)
        backdate(broker, old, days=1)

        deadline = time.monotonic() + 30
        while rows_of(broker, old)["instances"] and time.monotonic() < deadline:
            assert broker.get_step(worker) is None  # the claim path, as an idle worker polls
            time.sleep(0.05)

        assert rows_of(broker, old) == {"instances": 0, "steps": 0, "events": 0, "signals": 0}
        assert rows_of(broker, recent)["instances"] == 2
        assert verify(broker.engine) == []
    finally:
        broker.close()


def test_retention_zero_or_none_keeps_everything_and_a_negative_one_is_refused(db_url: str) -> None:
    for keep_all in (0, None, timedelta(0)):
        broker = SqlBroker(db_url, retention=keep_all)
        try:
            assert broker.retention is None
            worker = register(broker, one)
            ids = finished(broker, worker, one, 2)
            backdate(broker, ids, days=3650)
            broker.get_step(worker)
            assert broker.prune(0) == PruneCounts()
            assert rows_of(broker, ids)["instances"] == 2
        finally:
            broker.close()
    with pytest.raises(ValueError, match="positive duration"):
        SqlBroker(db_url, retention=-1)


def test_pruning_skips_an_instance_someone_holds_instead_of_waiting(postgres_url: URL) -> None:
    """PostgreSQL only: SQLite runs one writer at a time, so there is no row lock to skip."""
    broker = SqlBroker(postgres_url)
    try:
        worker = register(broker, one)
        held, free = finished(broker, worker, one, 2)
        backdate(broker, [held, free])
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:  # as a report, cancel or repair does: the instance row, FOR NO KEY UPDATE
            with broker.engine.connect() as conn, conn.begin():
                conn.execute(
                    sa.select(instances.c.id).where(instances.c.id == held).with_for_update(key_share=True)
                )
                locked.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert locked.wait(10)
            began = time.monotonic()
            deleted = broker.prune(DAYS_7)
            assert time.monotonic() - began < 1.0
        finally:
            release.set()
            holder.join()
        assert deleted.instances == 1
        assert rows_of(broker, [held])["instances"] == 1
        assert broker.prune(DAYS_7).instances == 1  # released: it goes now
    finally:
        broker.close()


def test_verify_finds_the_steps_events_and_signals_of_a_missing_instance(db_url: str) -> None:
    broker = SqlBroker(db_url)
    try:
        worker = register(broker, one)
        instance_id = one.dispatch(broker, {"x": 1})
        broker.signal(instance_id, "note")
        shapes.run_all(broker, worker, [one])
        assert verify(broker.engine) == []
    finally:
        broker.close()
    # The instance row deleted by hand, foreign keys off (no cascade): what pruning never leaves.
    engine = sa.create_engine(db_url)  # SQLite: a plain connection, foreign keys off
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.execute(sa.delete(instances).where(instances.c.id == instance_id))
    finally:
        engine.dispose()

    checked = create_database_engine(db_url)
    try:
        found = verify(checked)
    finally:
        checked.dispose()
    assert sorted(v.kind for v in found) == ["orphaned_event", "orphaned_signal", "orphaned_step"]
    assert {v.instance_id for v in found} == {instance_id}
    assert "of an instance that does not exist" in str(found[0])
