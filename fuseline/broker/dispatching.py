"""What a dispatch may ask for besides the inputs: a start time, an idempotency key, a priority.

Checked here, once, for every broker, before anything is written, so a bad
option is one clear error (``InvalidDispatch``) whichever broker gets it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..errors import InvalidDispatch
from ..workflow.schema import name_problem

#: Longest idempotency key, in characters.
MAX_KEY_LENGTH = 200
#: Priorities are stored as 32-bit integers.
PRIORITY_RANGE = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Dispatch:
    """One instance to dispatch with its options, for ``dispatch_many``.

    ``delay`` (seconds from now) or ``at`` (a timezone-aware time): when its
    first steps become claimable. ``key``: at most one instance per key of
    the workflow. ``priority``: higher first among claimable steps; every
    step of the instance has it.
    """

    inputs: Mapping[str, Any] = field(default_factory=dict)
    delay: float | None = None
    at: datetime | None = None
    key: str | None = None
    priority: int = 0

    def checked(self) -> Dispatch:
        """This dispatch, its options checked: InvalidDispatch names what is wrong."""
        return Dispatch(self.inputs, *check_options(self.delay, self.at, self.key, self.priority))

    @property
    def waits(self) -> bool:
        """Whether its first steps wait (a delay or a time) instead of starting at once."""
        return bool(self.delay) or self.at is not None


def check_options(
    delay: float | None, at: datetime | None, key: str | None, priority: int
) -> tuple[float | None, datetime | None, str | None, int]:
    """(delay in seconds, at, key, priority), checked. A delay counts on the database's clock
    from the moment the instance is written; ``at`` is a point in time, kept as given (each
    broker compares it with its own clock: nothing here reads this process's wall clock)."""
    if delay is not None and at is not None:
        raise InvalidDispatch("give delay or at, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float, timedelta)):
            raise InvalidDispatch(f"delay must be a number of seconds, not {delay!r}")
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidDispatch(f"delay must be 0 or more seconds, not {delay!r}")
        delay = seconds
    if at is not None:
        if not isinstance(at, datetime):
            raise InvalidDispatch(f"at must be a datetime, not {at!r}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidDispatch(
                f"at must carry a time zone (e.g. 2026-12-01T02:30:00+01:00), not {at.isoformat()}"
            )
    problem = name_problem("key", key, MAX_KEY_LENGTH) if key is not None else None
    if problem is not None:
        raise InvalidDispatch(problem)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidDispatch(f"priority must be an integer, not {priority!r}")
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        raise InvalidDispatch(f"priority must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}")
    return delay, at, key, priority


def as_dispatches(items: Sequence[Mapping[str, Any] | Dispatch]) -> list[Dispatch]:
    """``dispatch_many``'s items (plain inputs or Dispatch objects), checked."""
    return [(item if isinstance(item, Dispatch) else Dispatch(item)).checked() for item in items]
