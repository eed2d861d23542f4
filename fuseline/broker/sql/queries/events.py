"""Statements on instance histories (``fuseline_events``) and work announcements."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    Insert,
    Select,
    TextClause,
    and_,
    bindparam,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
)

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
        #: The successes of SUCCEEDED steps a retry or a repair is about to reset (or, for a
        #: Map, to delete the items of), which no event holds yet: each a ``succeeded`` row
        #: keeping its claim, dated when it happened, like the row a worker's success wrote
        #: before (:mod:`..history`). Of the steps ``p_names`` and their items.
        self.events_append_step_successes: Insert = insert(events).from_select(
            ["instance_id", "at", "kind", "step_name", "attempt", "worker_id", "claimed_at"],
            select(
                steps.c.instance_id,
                steps.c.finished_at,
                literal(EventKind.SUCCEEDED.value),
                steps.c.name,
                steps.c.attempt,
                steps.c.reported_by,
                steps.c.started_at,
            ).where(
                steps.c.instance_id == bindparam("p_instance_id"),
                or_(
                    steps.c.name.in_(bindparam("p_names", expanding=True)),
                    steps.c.item_of.in_(bindparam("p_names", expanding=True)),
                ),
                steps.c.state == Status.SUCCEEDED.value,
                not_(step_success_logged()),
            ),
        )
        #: The steps of an instance whose rows hold lines no event does (see ``told_by_rows``).
        self.steps_told_by_rows: Select = told_by_rows().where(
            steps.c.instance_id == bindparam("p_instance_id")
        )
        #: One snapshot for the reads of a history: the rows and the events must agree on whether
        #: a success is stored yet (SQLite's transactions see the database alone already).
        self.history_snapshot: TextClause | None = (
            text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if dialect.is_postgresql
            else None
        )
        #: Tell idle workers (LISTEN fuseline_work) that steps were queued; sent at commit.
        self.work_announce: Select | None = (
            select(func.pg_notify(WORK_CHANNEL, "")) if dialect.is_postgresql else None
        )


def told_by_rows(*leading: ColumnElement[Any]) -> Select:
    """The steps whose rows hold lines no event does (:mod:`..timeline`): running ones, with
    their claim; SUCCEEDED ones, with the claim and the success of their last attempt."""
    return select(
        *leading,
        steps.c.name,
        steps.c.state,
        steps.c.attempt,
        steps.c.worker_id,
        steps.c.reported_by,
        steps.c.started_at,
        steps.c.finished_at,
    ).where(
        or_(
            and_(steps.c.state == Status.RUNNING.value, steps.c.worker_id.is_not(None)),
            steps.c.state == Status.SUCCEEDED.value,
        )
    )


def claim_stored(
    instance_id: ColumnElement[Any],
    step_name: ColumnElement[Any],
    attempt: ColumnElement[Any],
    *,
    since: ColumnElement[Any] | None = None,
) -> Exists:
    """Whether a ``claimed`` row (written before migration 0010, or by a cancel or a repair)
    holds this claim already (dated ``since`` or later, if given)."""
    stored = events.alias("stored_claim")
    return (
        select(stored.c.id)
        .where(
            stored.c.instance_id == instance_id,
            stored.c.step_name == step_name,
            stored.c.kind == EventKind.CLAIMED.value,
            stored.c.attempt == attempt,
            *([] if since is None else [stored.c.at >= since]),
        )
        .exists()
    )


def step_success_logged() -> Exists:
    """Whether the step row's success has a line: one dated no earlier than it. A line written
    with the success is dated when it was written, after the row's ``finished_at``; a success
    before a reset is dated before the success that followed it."""
    return (
        select(events.c.id)
        .where(
            events.c.instance_id == steps.c.instance_id,
            events.c.step_name == steps.c.name,
            events.c.kind == EventKind.SUCCEEDED.value,
            events.c.at >= steps.c.finished_at,
        )
        .exists()
    )


def _running_claims(*which: ColumnElement[bool]) -> Insert:
    # A claim made before migration 0010 has a ``claimed`` row already.
    logged_already = claim_stored(
        steps.c.instance_id, steps.c.name, steps.c.attempt, since=steps.c.started_at
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
