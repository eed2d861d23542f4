"""``SqlBroker``'s schedules: stored in ``fuseline_schedules``, fired by running workers' claims.

No daemon: every claim (and every report-and-claim) first asks, at most every
``INTERVAL`` seconds per broker, whether a schedule is due, by the database's
clock. That question is one indexed statement (PostgreSQL: one round trip in
autocommit). When one is, one transaction reads the database's now, locks the
due rows (PostgreSQL: ``SKIP LOCKED``, so workers split them and never wait;
SQLite: one writer at a time), dispatches each schedule's latest due tick
keyed ``name@tick`` (:mod:`..schedules`), and moves it to the first tick after
now, all committed together. A tick fired twice would name the same instance
(the key), so however many workers run, each tick has one instance.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from ...errors import DatabaseError, FuselineError, UnknownSchedule
from .. import codec
from ..dispatching import Dispatch
from ..schedules import NewSchedule, ScheduleInfo, ScheduleSpec, schedule_exists, tick_key
from .database import Database, PostgresDatabase
from .dispatching import InstanceCreation
from .plans import PlanCache
from .queries.schedules import SCHEDULES_DUE_EXIST_PG, ScheduleQueries, for_dialect
from .rows import aware

logger = logging.getLogger(__name__)

#: Seconds between two looks for due schedules by one broker: a tick fires at most this late
#: while a worker claims (an idle worker claims every poll interval, 0.5 s by default).
INTERVAL = 0.5
#: At most this many schedules fired per transaction.
BATCH = 50


def info_of(row: Row) -> ScheduleInfo:
    """A stored row as users see it (times timezone-aware, inputs decoded)."""
    return ScheduleInfo(
        name=row.name,
        workflow_id=row.workflow_id,
        version=row.version,
        spec=ScheduleSpec(cron=row.cron, every=row.every, timezone=row.timezone),
        inputs=codec.decode(row.inputs),
        paused=bool(row.paused),
        next_fire_at=_aware(row.next_fire_at),
        created_at=_aware(row.created_at),
        last_tick=aware(row.last_tick),
        last_instance_id=str(row.last_instance_id) if row.last_instance_id is not None else None,
    )


@dataclass
class SqlSchedules:
    """Adding, listing, pausing, resuming, removing and firing schedules."""

    db: Database
    queries: ScheduleQueries
    plans: PlanCache
    creation: InstanceCreation
    _next_look: float = field(default=0.0, init=False)
    _looking: threading.Lock = field(default_factory=threading.Lock, init=False)

    @classmethod
    def on(cls, db: Database, plans: PlanCache, creation: InstanceCreation) -> SqlSchedules:
        return cls(db, for_dialect(db.dialect_name), plans, creation)

    def store(self, schedule: NewSchedule) -> ScheduleInfo:
        """Register the definition and store the schedule in one transaction (nothing of it when
        the name is taken)."""
        schema = schedule.schema
        with self.db.transaction() as conn:
            plans = self.plans.store(conn, [schema])
            now = self._now(conn)
            row = conn.execute(
                self.queries.schedule_insert,
                {
                    "name": schedule.name,
                    "workflow_id": schema.workflow_id,
                    "version": schema.version,
                    "cron": schedule.spec.cron,
                    "every": schedule.spec.every,
                    "timezone": schedule.spec.timezone,
                    "inputs": schedule.inputs,
                    "paused": False,
                    "next_fire_at": schedule.spec.next_tick(now),
                    "created_at": now,
                },
            ).first()
            if row is None:
                raise schedule_exists(schedule.name)
        self.plans.remember(plans)
        return info_of(row)

    def list(self) -> list[ScheduleInfo]:
        with self.db.transaction() as conn:
            return [info_of(row) for row in conn.execute(self.queries.schedules_all)]

    def set_paused(self, name: str, paused: bool) -> ScheduleInfo:
        """Pause, or resume from the first tick after now (ticks passed while paused never fire)."""
        with self.db.transaction() as conn:
            row = conn.execute(self.queries.schedule_lock, {"p_name": name}).first()
            if row is None:
                raise UnknownSchedule(name)
            if bool(row.paused) == paused:
                return info_of(row)
            info = info_of(row)
            next_fire_at = info.next_fire_at if paused else info.spec.next_tick(self._now(conn))
            params = {"p_name": name, "p_paused": paused, "p_next_fire_at": next_fire_at}
            return info_of(conn.execute(self.queries.schedule_set_paused, params).one())

    def remove(self, name: str) -> None:
        with self.db.transaction() as conn:
            if conn.execute(self.queries.schedule_delete, {"p_name": name}).first() is None:
                raise UnknownSchedule(name)

    def fire_due(self) -> list[str]:
        """What claims call: at most every INTERVAL seconds, a look, and a firing if one is due."""
        with self._looking:
            now = time.monotonic()
            if now < self._next_look:
                return []
            self._next_look = now + INTERVAL
        return self.fire() if self._any_due() else []

    def fire(self) -> list[str]:
        """Fire every due schedule (up to BATCH) in one transaction; the instances dispatched."""
        fired: list[str] = []
        with self.db.transaction() as conn:
            now = self._now(conn)
            due = conn.execute(self.queries.schedules_due_lock, {"p_now": now, "p_limit": BATCH}).all()
            for row in due:
                instance_id = self._fire(conn, row, now)
                if instance_id is not None:
                    fired.append(instance_id)
        return fired

    def _fire(self, conn: Connection, row: Row, now: datetime) -> str | None:
        info = info_of(row)
        tick, following = info.spec.due_tick(info.next_fire_at, now)
        moved: dict[str, Any] = {"p_name": info.name, "p_was": info.next_fire_at, "p_next_fire_at": following}
        if tick is None:  # not due after all (cannot happen: the statement selected it as due)
            return None
        try:
            plan = self.plans.get(conn, (info.workflow_id, info.version))
            dispatch = Dispatch(info.inputs, key=tick_key(info.name, tick))
            instance_id = self.creation.dispatch_within(conn, plan, dispatch)
        except DatabaseError:
            raise
        except FuselineError as exc:  # the tick's key taken with other inputs: skip the tick
            logger.warning("schedule %r could not fire its tick %s: %s", info.name, tick.isoformat(), exc)
            conn.execute(self.queries.schedule_skipped, moved)
            return None
        conn.execute(self.queries.schedule_fired, {**moved, "p_tick": tick, "p_instance_id": instance_id})
        return instance_id

    def _any_due(self) -> bool:
        if isinstance(self.db, PostgresDatabase):
            return bool(self.db.rows(SCHEDULES_DUE_EXIST_PG, {}))
        with self.db.transaction() as conn:
            return conn.execute(self.queries.schedules_due_exist).first() is not None

    def _now(self, conn: Connection) -> datetime:
        return _aware(conn.execute(self.queries.clock_now).scalar_one())


def _aware(value: datetime) -> datetime:
    stamped = aware(value)
    assert stamped is not None
    return stamped


class SqlScheduling:
    """The schedule methods of :class:`~fuseline.broker.sql.SqlBroker` (a mixin over its
    ``_schedules``)."""

    _schedules: SqlSchedules

    def store_schedule(self, schedule: NewSchedule) -> ScheduleInfo:
        return self._schedules.store(schedule)

    def list_schedules(self) -> list[ScheduleInfo]:
        return self._schedules.list()

    def pause_schedule(self, name: str) -> ScheduleInfo:
        return self._schedules.set_paused(name, True)

    def resume_schedule(self, name: str) -> ScheduleInfo:
        return self._schedules.set_paused(name, False)

    def remove_schedule(self, name: str) -> None:
        self._schedules.remove(name)

    def fire_schedules(self) -> list[str]:
        return self._schedules.fire()
