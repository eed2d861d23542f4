"""The events of one transaction, written together when it is done (``fuseline_events``).

A claim writes no event: while a step runs, its row says who holds it since
when. The event that ends the attempt (failed, released, ...) keeps the claim
in ``claimed_at`` (``claimed=True``), read from the step row in the same
transaction. A worker's success writes no event either: the SUCCEEDED row
says who reported it when, and who claimed it when, until a retry or a
repair resets the step. A running step cancelled or ended by an operator has
no event naming its holder: :func:`record_running_claims` gives its claim a
``claimed`` row of its own, before the change; :func:`record_step_successes`
gives the successes a reset is about to erase a ``succeeded`` row each.
:mod:`.timeline` lists the claims and successes as lines of their own again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ...states import EventKind
from .queries.events import EventQueries

#: Which statement appends a row: a plain event, or one ending a claim.
_PLAIN, _ENDING = "events_append", "events_append_ending"


class History:
    """Events gathered while a transaction changes an instance, appended in the order they
    were added (consecutive rows of one kind in one statement)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def add(
        self,
        instance_id: str,
        kind: EventKind,
        step_name: str | None = None,
        attempt: int | None = None,
        worker_id: str | None = None,
        detail: str | None = None,
        *,
        claimed: bool = False,
    ) -> None:
        """``claimed``: the event ends the attempt ``worker_id`` claimed; it keeps that claim."""
        row = {
            "instance_id": instance_id,
            "kind": kind.value,
            "step_name": step_name,
            "attempt": attempt,
            "worker_id": worker_id,
            "detail": detail,
        }
        if claimed:
            self.rows.append((_ENDING, {**row, "p_instance_id": instance_id, "p_name": step_name}))
        else:
            self.rows.append((_PLAIN, row))

    def write(self, conn: Connection, queries: EventQueries) -> None:
        run: list[dict[str, Any]] = []
        for n, (statement, row) in enumerate(self.rows):
            run.append(row)
            if n + 1 == len(self.rows) or self.rows[n + 1][0] != statement:
                conn.execute(getattr(queries, statement), run)
                run = []
        self.rows = []


def record_running_claims(
    conn: Connection, queries: EventQueries, instance_id: str, names: list[str] | None = None
) -> None:
    """Before a cancel or a repair takes running steps from their holders: keep their claims
    (of the steps ``names``; None: of every step of the instance)."""
    if names is None:
        conn.execute(queries.events_append_running_claims_all, {"p_instance_id": instance_id})
    elif names:
        conn.execute(queries.events_append_running_claims, {"p_instance_id": instance_id, "p_names": names})


def record_step_successes(
    conn: Connection, queries: EventQueries, instance_id: str, names: list[str]
) -> None:
    """Before a retry or a repair resets the steps ``names`` (and deletes their Map items): keep
    the successes their rows hold."""
    if names:
        conn.execute(queries.events_append_step_successes, {"p_instance_id": instance_id, "p_names": names})


def record_instance_success(conn: Connection, queries: EventQueries, instance_id: str) -> None:
    """Before a SUCCEEDED instance is reopened: its success, held by its row, becomes a line."""
    conn.execute(queries.events_append_instance_success, {"p_instance_id": instance_id})
