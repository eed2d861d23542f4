"""Rows as records: claims as assignments, instances and workers as what users see.

SQLite hands timestamps back without a time zone (they are UTC); every one
leaves here timezone-aware.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from sqlalchemy import Row

from ...states import Status
from .. import codec
from ..base import InstanceInfo, StepAssignment, StepInfo, WorkerInfo


def aware(value: datetime | None) -> datetime | None:
    """A stored timestamp as a timezone-aware UTC datetime (None stays None)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class ClaimRow(NamedTuple):
    """A claimed step, as both claim paths return it."""

    instance_id: str
    workflow_id: str
    version: str
    name: str
    attempt: int
    started_at: datetime
    lease_expires_at: datetime
    #: The instance inputs (JSON text).
    inputs: str
    #: The consumed predecessors' results as one JSON object (text), or None for none.
    results: str | None
    #: When it became claimable: where the claim floors follow the queue.
    available_at: datetime
    #: Minus its instance's priority, and the queue it was claimed from.
    urgency: int = 0
    queue: str = "default"
    #: A Map item's value (JSON text); None for other steps.
    item: str | None = None

    @classmethod
    def of(cls, row: Sequence[Any]) -> ClaimRow:
        instance_id, *rest = row
        claimed = cls(str(instance_id), *rest)
        if claimed.started_at.tzinfo is not None:  # PostgreSQL's are; SQLite's are naive UTC
            return claimed
        return claimed._replace(
            started_at=aware(claimed.started_at),
            lease_expires_at=aware(claimed.lease_expires_at),
            available_at=aware(claimed.available_at),
        )

    def assignment(self) -> StepAssignment:
        return StepAssignment(
            workflow_id=self.workflow_id,
            instance_id=self.instance_id,
            step_name=self.name,
            payload={
                "workflow_inputs": codec.decode(self.inputs),
                "results": codec.decode(self.results) if self.results else {},
                **({"item": codec.decode(self.item)} if self.item is not None else {}),
            },
            assigned_at=self.started_at,
            expires_at=self.lease_expires_at,
            attempt=self.attempt,
            version=self.version,
        )


def results_object(results: Mapping[str, str | None]) -> str | None:
    """Stored results (JSON texts) of named steps as one JSON object, as the claim statement builds it."""
    if not results:
        return None
    return "{" + ",".join(f"{json.dumps(name)}:{text or 'null'}" for name, text in results.items()) + "}"


def step_info(row: Row[Any]) -> StepInfo:
    return StepInfo(
        name=row.name,
        state=Status(row.state),
        attempt=row.attempt - row.released,
        result=codec.decode(row.result),
        error=row.error,
        worker_id=row.worker_id,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at),
        max_attempts=row.max_attempts,
        retries=row.retries,
        child_instance_id=str(row.child_instance_id) if row.child_instance_id else None,
    )


def instance_info(row: Row[Any], step_rows: Sequence[Row[Any]]) -> InstanceInfo:
    return InstanceInfo(
        instance_id=row.id,
        workflow_id=row.workflow_id,
        version=row.version,
        status=Status(row.status),
        inputs=codec.decode(row.inputs),
        result=codec.decode(row.result),
        error=row.error,
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        finished_at=aware(row.finished_at),
        steps=[step_info(s) for s in step_rows],
        key=row.key,
        priority=row.priority,
        parent_instance_id=str(row.parent_instance_id) if row.parent_instance_id else None,
        parent_step=row.parent_step,
    )


def worker_info(row: Row[Any], held: Sequence[str], dead_after: timedelta) -> WorkerInfo:
    last = aware(row.last_heartbeat)
    now = aware(row.db_now)
    return WorkerInfo(
        worker_id=row.id,
        host=row.host,
        pid=row.pid,
        workflows=[f"{k[0]}@{k[1]}" for k in json.loads(row.workflows)],
        started_at=aware(row.started_at),  # type: ignore[arg-type]
        last_heartbeat=last,  # type: ignore[arg-type]
        stopped_at=aware(row.stopped_at),
        alive=row.stopped_at is None and now - last <= dead_after,  # type: ignore[operator]
        current_steps=list(held),
    )
