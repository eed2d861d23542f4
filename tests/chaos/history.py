"""Reading what happened from the database: events, ledger, workers; and the checks every run ends with."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import DateTime, Engine, type_coerce

from fuseline.broker.sql.dialects import dialect_of
from fuseline.broker.sql.models import events, instances, steps, workers
from fuseline.broker.sql.plans import PlanCache
from fuseline.broker.sql.queries import definitions
from fuseline.broker.sql.queries.events import told_by_rows
from fuseline.broker.sql.timeline import timeline
from fuseline.broker.sql.verify import verify
from tests.chaos.flows import LEDGER_DDL, LEDGER_TABLE


def norm(value: Any) -> str | None:
    """A UUID as canonical text (SQLite may hand back 32 hex digits)."""
    return None if value is None else str(uuid.UUID(str(value)))


def aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def create_ledger(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(LEDGER_DDL[engine.dialect.name])


def db_now(engine: Engine) -> datetime:
    """The database clock (the one leases and events use)."""
    now = dialect_of(engine.dialect.name).now()
    with engine.connect() as conn:
        return aware(conn.execute(sa.select(type_coerce(now, DateTime(timezone=True)))).scalar_one())


@dataclass(frozen=True)
class Event:
    id: int
    instance_id: str
    at: datetime
    kind: str
    step: str | None
    attempt: int | None
    worker_id: str | None


@dataclass(frozen=True)
class LedgerRow:
    n: int
    instance_id: str | None
    step: str
    attempt: int | None
    pid: int


@dataclass
class History:
    events: list[Event]
    ledger: list[LedgerRow]
    #: worker id -> pid
    worker_pids: dict[str, int]
    #: worker id -> when it registered (database clock)
    worker_started: dict[str, datetime]
    #: (instance, step) -> (state, attempt)
    step_states: dict[tuple[str, str], tuple[str, int]]
    #: instance -> (status, result text)
    instance_states: dict[str, tuple[str, str | None]]
    by_kind: dict[str, list[Event]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        grouped: dict[str, list[Event]] = defaultdict(list)
        for event in self.events:
            grouped[event.kind].append(event)
        self.by_kind = dict(grouped)

    def of(self, kind: str) -> list[Event]:
        return self.by_kind.get(kind, [])


def load_history(engine: Engine, ledger: bool = True) -> History:
    """Everything that happened, read the way ``instance_events`` reads one instance's history
    (claims and successes are lines of their own again: see ``fuseline.broker.sql.timeline``)."""
    with engine.connect() as conn:
        told_rows = conn.execute(told_by_rows(steps.c.instance_id)).all()
        event_rows = conn.execute(sa.select(events).order_by(events.c.id)).all()
        ledger_rows = (
            conn.exec_driver_sql(
                f"SELECT n, instance_id, step, attempt, pid FROM {LEDGER_TABLE} ORDER BY id"
            ).all()
            if ledger
            else []
        )
        worker_rows = conn.execute(sa.select(workers.c.id, workers.c.pid, workers.c.started_at)).all()
        step_rows = conn.execute(
            sa.select(steps.c.instance_id, steps.c.name, steps.c.state, steps.c.attempt)
        ).all()
        instance_rows = conn.execute(
            sa.select(
                instances.c.id,
                instances.c.workflow_id,
                instances.c.version,
                instances.c.status,
                instances.c.result,
                instances.c.created_at,
                instances.c.finished_at,
            )
        ).all()
        plans = PlanCache(definitions.for_dialect(engine.dialect.name))
        roots = {
            key: plans.get(conn, key).roots for key in {(r.workflow_id, r.version) for r in instance_rows}
        }
    return History(
        events=_lines(event_rows, told_rows, instance_rows, roots),
        ledger=[LedgerRow(r[0], norm(r[1]), r[2], r[3], r[4]) for r in ledger_rows],
        worker_pids={norm(r.id): r.pid for r in worker_rows},  # type: ignore[misc]
        worker_started={norm(r.id): aware(r.started_at) for r in worker_rows},  # type: ignore[misc]
        step_states={(norm(r.instance_id), r.name): (r.state, r.attempt) for r in step_rows},  # type: ignore[misc]
        instance_states={norm(r.id): (r.status, r.result) for r in instance_rows},  # type: ignore[misc]
    )


def _lines(
    event_rows: list[Any],
    told_rows: list[Any],
    instance_rows: list[Any],
    roots: dict[tuple[str, str], list[str]],
) -> list[Event]:
    """Each instance's history lines, instances in the order their first event was written."""
    stored: dict[str, list[Any]] = defaultdict(list)
    told: dict[str, list[Any]] = defaultdict(list)
    for row in event_rows:
        stored[norm(row.instance_id)].append(row)  # type: ignore[index]
    for row in told_rows:
        told[norm(row.instance_id)].append(row)  # type: ignore[index]
    ended = {norm(r.id): r for r in instance_rows}
    order = list(stored) + [i for i in ended if i not in stored]
    lines: list[Event] = []
    for instance_id in order:
        if instance_id not in ended:
            continue  # events of an instance deleted meanwhile (retention)
        instance = ended[instance_id]
        first_steps = roots[(instance.workflow_id, instance.version)]
        for line in timeline(stored[instance_id], told[instance_id], instance, first_steps):
            lines.append(
                Event(
                    len(lines),
                    instance_id,  # type: ignore[arg-type]
                    aware(line.at),
                    line.kind,
                    line.step_name,
                    line.attempt,
                    norm(line.worker_id),
                )
            )
    return lines


def assert_invariants(engine: Engine) -> None:
    """What ``fuseline db verify`` checks holds, and no step is left to run."""
    violations = [str(v) for v in verify(engine)]
    assert violations == [], "\n".join(violations[:20])
    with engine.connect() as conn:
        open_steps = conn.execute(
            sa.select(steps.c.state, sa.func.count())
            .where(steps.c.state.in_(["PENDING", "QUEUED", "RUNNING"]))
            .group_by(steps.c.state)
        ).all()
    assert open_steps == [], f"steps left open: {open_steps}"


def assert_each_step_accepted_once(
    history: History, instance_ids: list[str], step_names: tuple[str, ...]
) -> None:
    """Exactly one ``succeeded`` event per step, and the step row says SUCCEEDED."""
    accepted = Counter((e.instance_id, e.step) for e in history.of("succeeded"))
    wrong = {
        (i, s): accepted.get((i, s), 0)
        for i in instance_ids
        for s in step_names
        if accepted.get((i, s), 0) != 1
    }
    assert not wrong, f"steps not accepted exactly once: {sorted(wrong.items())[:10]}"
    not_succeeded = [
        (i, s, history.step_states.get((i, s)))
        for i in instance_ids
        for s in step_names
        if history.step_states.get((i, s), ("?",))[0] != "SUCCEEDED"
    ]
    assert not not_succeeded, f"steps not SUCCEEDED: {not_succeeded[:10]}"


def ledger_by_step(
    history: History, ids_by_n: dict[int, str], step_names: tuple[str, ...]
) -> dict[tuple[str, str], list[LedgerRow]]:
    """Ledger rows per (instance, step); checks every step ran at least once and rows are consistent."""
    rows: dict[tuple[str, str], list[LedgerRow]] = defaultdict(list)
    for row in history.ledger:
        assert row.n in ids_by_n, f"ledger row of an unknown instance: {row}"
        instance_id = ids_by_n[row.n]
        if row.instance_id is not None:
            assert row.instance_id == instance_id, f"step ran with another instance's inputs: {row}"
        rows[(instance_id, row.step)].append(row)
    missing = [(i, s) for i in ids_by_n.values() for s in step_names if (i, s) not in rows]
    assert not missing, f"steps without a ledger row: {missing[:10]}"
    for key, executions in rows.items():
        attempts = [r.attempt for r in executions if r.attempt is not None]
        assert len(attempts) == len(set(attempts)), f"two executions under one claim: {key}: {executions}"
    return dict(rows)


def describe_open_steps(engine: Engine, limit: int = 20) -> str:
    """The steps still PENDING, QUEUED or RUNNING with their holders and leases (for failure messages)."""
    dialect = dialect_of(engine.dialect.name)
    with engine.connect() as conn:
        now = conn.execute(sa.select(type_coerce(dialect.now(), DateTime(timezone=True)))).scalar_one()
        rows = conn.execute(
            sa.select(
                steps.c.instance_id,
                steps.c.name,
                steps.c.state,
                steps.c.attempt,
                steps.c.worker_id,
                steps.c.lease_expires_at,
                workers.c.pid,
            )
            .select_from(steps.outerjoin(workers, workers.c.id == steps.c.worker_id))
            .where(steps.c.state.in_(["QUEUED", "RUNNING"]))
            .order_by(steps.c.id)
            .limit(limit)
        ).all()
    lines = [f"database time {now}"]
    lines += [
        f"{r.instance_id} {r.name} {r.state} attempt={r.attempt} worker={r.worker_id} pid={r.pid} "
        f"lease={r.lease_expires_at}"
        for r in rows
    ]
    return "\n".join(lines)
