"""Statements on schedules (``fuseline_schedules``).

Firing is guarded twice: the due rows are locked (PostgreSQL: ``FOR UPDATE
SKIP LOCKED``, so concurrent workers split them and never wait; SQLite: one
writer at a time), and the move to the next fire time names the fire time it
replaces, so a tick is moved on once. The instance a tick dispatches is keyed
by the tick, so even a second firing would name the same instance.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import Delete, Insert, Select, Update, bindparam, delete, false, select, type_coerce, update

from ..dialects import Dialect, dialect_of
from ..models import Timestamp, schedules

#: PostgreSQL's "is any schedule due?" as one autocommit statement (one round trip, no
#: transaction): what every worker asks twice a second, so it is the cheapest form.
SCHEDULES_DUE_EXIST_PG = (
    "SELECT 1 FROM fuseline_schedules WHERE NOT paused AND next_fire_at <= clock_timestamp() LIMIT 1"
)


class ScheduleQueries:
    def __init__(self, dialect: Dialect) -> None:
        named = schedules.c.name == bindparam("p_name")
        due = (schedules.c.paused == false(), schedules.c.next_fire_at <= bindparam("p_now"))
        #: The database's clock, read once per transaction: ticks are computed against it, so
        #: workers whose clocks disagree still agree on what is due.
        self.clock_now: Select = select(type_coerce(dialect.now(), Timestamp).label("now"))
        #: Store a new schedule; no row back when the name is taken.
        self.schedule_insert: Insert = dialect.insert_ignoring_conflicts(schedules).returning(*schedules.c)
        self.schedules_all: Select = select(schedules).order_by(schedules.c.name)
        #: One schedule, locked for a pause or resume (SQLite: the transaction is the lock).
        self.schedule_lock: Select = select(schedules).where(named).with_for_update()
        self.schedule_set_paused: Update = (
            update(schedules)
            .where(named)
            .values(paused=bindparam("p_paused"), next_fire_at=bindparam("p_next_fire_at"))
            .returning(*schedules.c)
        )
        self.schedule_delete: Delete = delete(schedules).where(named).returning(schedules.c.name)
        #: Whether any schedule is due (by ``ix_fuseline_schedules_next_fire_at``).
        self.schedules_due_exist: Select = (
            select(schedules.c.name)
            .where(schedules.c.paused == false(), schedules.c.next_fire_at <= dialect.now())
            .limit(1)
        )
        #: The due schedules, earliest first, locked: a worker fires those no other is firing.
        due_rows = (
            select(schedules).where(*due).order_by(schedules.c.next_fire_at).limit(bindparam("p_limit"))
        )
        self.schedules_due_lock: Select = (
            due_rows.with_for_update(skip_locked=True) if dialect.skip_locked else due_rows
        )
        #: Move a fired schedule on, if its fire time is still the one this firing read.
        self.schedule_fired: Update = (
            update(schedules)
            .where(named, schedules.c.next_fire_at == bindparam("p_was"))
            .values(
                next_fire_at=bindparam("p_next_fire_at"),
                last_tick=bindparam("p_tick"),
                last_instance_id=bindparam("p_instance_id"),
            )
            .returning(schedules.c.name)
        )
        #: Move on a schedule whose tick could not dispatch (its key taken with other inputs).
        self.schedule_skipped: Update = (
            update(schedules)
            .where(named, schedules.c.next_fire_at == bindparam("p_was"))
            .values(next_fire_at=bindparam("p_next_fire_at"))
        )


@cache
def for_dialect(name: str) -> ScheduleQueries:
    return ScheduleQueries(dialect_of(name))
