"""The events of one transaction, written together when it is done (``fuseline_events``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ...states import EventKind
from .queries.events import EventQueries


class History:
    """Events gathered while a transaction changes an instance, appended in one statement."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        instance_id: str,
        kind: EventKind,
        step_name: str | None = None,
        attempt: int | None = None,
        worker_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.rows.append(
            {
                "instance_id": instance_id,
                "kind": kind.value,
                "step_name": step_name,
                "attempt": attempt,
                "worker_id": worker_id,
                "detail": detail,
            }
        )

    def write(self, conn: Connection, queries: EventQueries) -> None:
        if self.rows:
            conn.execute(queries.events_append, self.rows)
            self.rows = []
