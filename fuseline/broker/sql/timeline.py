"""An instance's history as ``instance_events`` lists it: the stored events, with each claim
as a line of its own again.

A claim writes no event (see :mod:`.history`): the claim of a running step is on its row,
and an attempt's end keeps the claim it ends (``claimed_at``). Both become ``claimed``
lines here, dated when the claim was made and placed among the stored events by that date:
after every line written before it, so the history reads in the order things happened.
A worker's success writes no event: a SUCCEEDED row whose success no event holds (none of
its step dated no earlier than its ``finished_at``: a line written with a success is dated
after it, and a reset stores the success dated as it) gives the ``claimed`` and
``succeeded`` lines of its last attempt, placed by date too.
An instance's success writes no event either: its row holds it (status and finished_at),
and it becomes the last line, ``instance_succeeded``. Nor does a dispatch: the first lines,
``dispatched`` and its first steps ``queued``, are dated when the instance was created.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ...states import EventKind, Status
from ..base import InstanceEvent
from .rows import aware

_CLAIMED = EventKind.CLAIMED.value
_DISPATCHED = EventKind.DISPATCHED.value
_QUEUED = EventKind.QUEUED.value
_SUCCEEDED = EventKind.SUCCEEDED.value
_INSTANCE_SUCCEEDED = EventKind.INSTANCE_SUCCEEDED.value
_RUNNING_STATE, _SUCCEEDED_STATE = Status.RUNNING.value, Status.SUCCEEDED.value
_REOPENING = frozenset({EventKind.REPAIRED.value, EventKind.RETRIED.value})


def timeline(
    stored: Iterable[Any], rows: Iterable[Any], instance: Any, roots: Sequence[str]
) -> list[InstanceEvent]:
    """``stored``: the instance's event rows in id order; ``rows``: its running and SUCCEEDED
    steps (name, state, attempt, worker_id, reported_by, started_at, finished_at), read in
    the same snapshot as ``stored`` and ``instance``: its status, created_at and finished_at;
    ``roots``: its plan's first steps, queued when it was dispatched."""
    stored = list(stored)
    lines = [] if any(row.kind == _DISPATCHED for row in stored) else _dispatch(instance, roots)
    claims: set[tuple[str | None, int | None]] = set()
    succeeded: dict[str | None, datetime] = {}  # per step, its last stored success
    for row in stored:
        if row.claimed_at is not None and (row.step_name, row.attempt) not in claims:
            _place(lines, _claim(row.step_name, row.attempt, row.worker_id, row.claimed_at))
        if row.kind == _CLAIMED or row.claimed_at is not None:
            # A claimed row: stored before migration 0010, or by a cancel or a repair.
            claims.add((row.step_name, row.attempt))
        line = InstanceEvent(
            at=aware(row.at),  # type: ignore[arg-type]
            kind=row.kind,
            step_name=row.step_name,
            attempt=row.attempt,
            worker_id=row.worker_id,
            detail=row.detail,
        )
        if row.kind == _SUCCEEDED:
            succeeded[row.step_name] = max(line.at, succeeded.get(row.step_name, line.at))
            # By its date: a success a reset stored is written after lines that followed it.
            _place(lines, line, ties_first=True)
        else:
            lines.append(line)
    for step in rows:
        told = step.state == _SUCCEEDED_STATE and not _success_held(succeeded.get(step.name), step)
        claimed = step.started_at is not None and step.worker_id is not None
        if (step.state == _RUNNING_STATE or told) and claimed and (step.name, step.attempt) not in claims:
            _place(lines, _claim(step.name, step.attempt, step.worker_id, step.started_at))
        if told:
            # Before a line of the same instant: the lines its transaction wrote (the successors
            # it queued) are dated no earlier than the success.
            _place(lines, _success(step), ties_first=True)
    if instance.status == Status.SUCCEEDED.value and not _success_stored(lines):
        # Nothing is written for a SUCCEEDED instance (a repair reopens it first), so its
        # success is the last line. The general path writes a transaction's lines when it
        # ends, a little after it ended the instance: the line is dated no earlier than they.
        ended = aware(instance.finished_at)
        at = max(ended, lines[-1].at) if lines else ended
        lines.append(InstanceEvent(at=at, kind=_INSTANCE_SUCCEEDED))  # type: ignore[arg-type]
    return lines


def _success_stored(lines: list[InstanceEvent]) -> bool:
    """Whether the instance's last success has a line: one written before migration 0010, or
    by a repair that reopened it, after the last repair or retry (each reopens the instance)."""
    for line in reversed(lines):
        if line.kind == _INSTANCE_SUCCEEDED:
            return True
        if line.kind in _REOPENING:
            return False
    return False


def _dispatch(instance: Any, roots: Sequence[str]) -> list[InstanceEvent]:
    """A dispatch's lines (rows of their own before migration 0010): the instance created, and
    its first steps queued, in the plan's order."""
    at = aware(instance.created_at)
    return [
        InstanceEvent(at=at, kind=_DISPATCHED),  # type: ignore[arg-type]
        *(InstanceEvent(at=at, kind=_QUEUED, step_name=name) for name in roots),  # type: ignore[arg-type]
    ]


def _claim(step_name: str | None, attempt: int | None, worker_id: str | None, at: datetime) -> InstanceEvent:
    return InstanceEvent(
        at=aware(at),  # type: ignore[arg-type]
        kind=_CLAIMED,
        step_name=step_name,
        attempt=attempt,
        worker_id=str(worker_id) if worker_id is not None else None,
    )


def _success_held(stored: datetime | None, step: Any) -> bool:
    """Whether the step's last stored success (``stored``) is the one its row holds."""
    return stored is not None and (step.finished_at is None or stored >= aware(step.finished_at))


def _success(step: Any) -> InstanceEvent:
    return InstanceEvent(
        at=aware(step.finished_at),  # type: ignore[arg-type]
        kind=_SUCCEEDED,  # type: ignore[arg-type]
        step_name=step.name,
        attempt=step.attempt,
        worker_id=str(step.reported_by) if step.reported_by is not None else None,
    )


def _place(lines: list[InstanceEvent], line: InstanceEvent, *, ties_first: bool = False) -> None:
    """Insert ``line`` after the last line earlier than it (``ties_first``) or not later than it,
    and after its attempt's claim (a clock set back while the step ran cannot list its end
    first)."""
    at = len(lines)
    while at > 0 and not _claim_of(lines[at - 1], line):
        earlier = lines[at - 1].at
        if earlier < line.at or (earlier == line.at and not ties_first):
            break
        at -= 1
    lines.insert(at, line)


def _claim_of(earlier: InstanceEvent, line: InstanceEvent) -> bool:
    return (
        earlier.kind == _CLAIMED
        and line.kind != _CLAIMED
        and (earlier.step_name, earlier.attempt) == (line.step_name, line.attempt)
    )
