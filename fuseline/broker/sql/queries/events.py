"""Statements on instance histories (``fuseline_events``) and work announcements."""

from __future__ import annotations

from functools import cache

from sqlalchemy import ColumnElement, Insert, Select, bindparam, func, insert, literal, not_, select

from ....states import EventKind, Status
from ..dialects import Dialect, dialect_of
from ..listener import CHANNEL as WORK_CHANNEL
from ..models import events, instances, steps


class EventQueries:
    def __init__(self, dialect: Dialect) -> None:
        #: History is append-only: written in the transaction of the change it records.
        self.events_append: Insert = insert(events).values(at=dialect.now())
        claim_of_step = (
            select(steps.c.started_at)
            .where(steps.c.instance_id == bindparam("p_instance_id"), steps.c.name == bindparam("p_name"))
            .scalar_subquery()
        )
        #: An event that ends an attempt (``History.add(..., claimed=True)``), with the claim it
        #: ends: the step's ``started_at``, read before any later claim can change it.
        self.events_append_ending: Insert = insert(events).values(at=dialect.now(), claimed_at=claim_of_step)
        #: The claims of running steps an operator or a cancel is about to take away (no event
        #: names their holder): each a ``claimed`` row of its own, dated when it was made. Run
        #: before the change, while the rows still say who holds them. Of the steps ``p_names``;
        #: ``..._all``: of every step of the instance.
        self.events_append_running_claims: Insert = _running_claims(
            steps.c.name.in_(bindparam("p_names", expanding=True))
        )
        self.events_append_running_claims_all: Insert = _running_claims()
        self.events_of_instance: Select = (
            select(events).where(events.c.instance_id == bindparam("p_instance_id")).order_by(events.c.id)
        )
        reopened_last = (
            select(func.coalesce(func.max(events.c.id), 0))
            .where(
                events.c.instance_id == bindparam("p_instance_id"),
                events.c.kind.in_([EventKind.REPAIRED.value, EventKind.RETRIED.value]),
            )
            .scalar_subquery()
        )
        success_logged = (
            select(events.c.id)
            .where(
                events.c.instance_id == bindparam("p_instance_id"),
                events.c.kind == EventKind.INSTANCE_SUCCEEDED.value,
                events.c.id > reopened_last,
            )
            .exists()
        )
        #: A SUCCEEDED instance's success as a line of its own, dated when it happened (before a
        #: repair reopens it; a success stored before migration 0010 has its line already).
        self.events_append_instance_success: Insert = insert(events).from_select(
            ["instance_id", "at", "kind"],
            select(
                instances.c.id, instances.c.finished_at, literal(EventKind.INSTANCE_SUCCEEDED.value)
            ).where(
                instances.c.id == bindparam("p_instance_id"),
                instances.c.status == Status.SUCCEEDED.value,
                not_(success_logged),
            ),
        )
        #: The claims of an instance's running steps, which no event holds yet (:mod:`..timeline`).
        self.claims_running: Select = select(
            steps.c.name, steps.c.attempt, steps.c.worker_id, steps.c.started_at
        ).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.state == Status.RUNNING.value,
            steps.c.worker_id.is_not(None),
        )
        #: Tell idle workers (LISTEN fuseline_work) that steps were queued; sent at commit.
        self.work_announce: Select | None = (
            select(func.pg_notify(WORK_CHANNEL, "")) if dialect.is_postgresql else None
        )


def _running_claims(*which: ColumnElement[bool]) -> Insert:
    # A claim made before migration 0010 has a ``claimed`` row already.
    logged_already = (
        select(events.c.id)
        .where(
            events.c.instance_id == steps.c.instance_id,
            events.c.step_name == steps.c.name,
            events.c.kind == EventKind.CLAIMED.value,
            events.c.attempt == steps.c.attempt,
            events.c.at >= steps.c.started_at,
        )
        .exists()
    )
    running = select(
        steps.c.instance_id,
        steps.c.started_at,
        literal(EventKind.CLAIMED.value),
        steps.c.name,
        steps.c.attempt,
        steps.c.worker_id,
    ).where(
        steps.c.instance_id == bindparam("p_instance_id"),
        *which,
        steps.c.state == Status.RUNNING.value,
        steps.c.worker_id.is_not(None),
        not_(logged_already),
    )
    return insert(events).from_select(
        ["instance_id", "at", "kind", "step_name", "attempt", "worker_id"], running
    )


@cache
def for_dialect(name: str) -> EventQueries:
    return EventQueries(dialect_of(name))
