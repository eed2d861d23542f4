"""Statements on instance histories (``fuseline_events``) and work announcements."""

from __future__ import annotations

from functools import cache

from sqlalchemy import Insert, Select, bindparam, func, insert, select

from ..dialects import Dialect, dialect_of
from ..listener import CHANNEL as WORK_CHANNEL
from ..models import events


class EventQueries:
    def __init__(self, dialect: Dialect) -> None:
        #: History is append-only: written in the transaction of the change it records.
        self.events_append: Insert = insert(events).values(at=dialect.now())
        self.events_of_instance: Select = (
            select(events).where(events.c.instance_id == bindparam("p_instance_id")).order_by(events.c.id)
        )
        #: Tell idle workers (LISTEN fuseline_work) that steps were queued; sent at commit.
        self.work_announce: Select | None = (
            select(func.pg_notify(WORK_CHANNEL, "")) if dialect.is_postgresql else None
        )


@cache
def for_dialect(name: str) -> EventQueries:
    return EventQueries(dialect_of(name))
