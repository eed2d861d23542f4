"""Schedules: when a cron or interval schedule ticks, as pure functions of an injected "now".

Every broker fires schedules with these functions, so memory, SQLite and
PostgreSQL agree on every tick, and tests drive them with any clock.

- **Cron** expressions are read by ``cronsim`` in the schedule's time zone
  (``zoneinfo``). On the day clocks go forward, a time that does not exist
  (02:30 in ``Europe/Oslo``) fires once, at the first minute after the gap
  (03:00 local), as Debian's cron does; on the day they go back, a time that
  exists twice fires once, at its first occurrence. Schedules that run every
  hour or more often keep their plain rhythm through both changes.
- **Intervals** (``every`` whole seconds) tick at the multiples of that many
  seconds since the Unix epoch, in UTC: every worker computes the same ticks
  without asking another.
- **Ticks** are instants in UTC. The tick an instance is dispatched for is
  its idempotency key, ``name@tick``, so firing a tick twice (two workers,
  a replayed transaction) creates one instance.
- **Downtime**: when several ticks passed while nothing fired them, only the
  latest fires (:func:`due_tick`); a backlog of stale runs helps nobody.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ..errors import ScheduleError
from ..workflow.schema import WorkflowSchema, name_problem
from . import codec

UTC = timezone.utc
#: Longest schedule name: its instances' keys (``name@`` and a 32-character tick) fit in 200.
MAX_NAME_LENGTH = 160
MAX_CRON_LENGTH = 200
#: An interval longer than this (about 100 years) is a typo, and would overflow a datetime.
MAX_EVERY_SECONDS = 100 * 366 * 24 * 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECONDS = 1_000_000


@dataclass(frozen=True)
class ScheduleSpec:
    """When a schedule ticks: ``cron`` read in ``timezone``, or ``every`` whole seconds.

    Build it with :meth:`of`, which checks it; the methods assume a checked spec.
    """

    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"

    @classmethod
    def of(cls, *, cron: str | None = None, every: Any = None, timezone: str | None = None) -> ScheduleSpec:
        """A checked spec; ScheduleError names what is wrong (and nothing has been written)."""
        if (cron is None) == (every is None):
            raise ScheduleError(
                "give a cron expression or an interval, not both"
                if cron is not None
                else "give a cron expression (cron='30 2 * * *') or an interval (every=SECONDS)"
            )
        if every is not None:
            if timezone is not None:
                raise ScheduleError(
                    "a time zone applies to cron expressions only; intervals tick at multiples of "
                    "their seconds in UTC"
                )
            return cls(every=_seconds(every))
        zone = timezone if timezone is not None else "UTC"
        _zone(zone)
        spec = cls(cron=_cron(cron), timezone=zone)
        try:
            spec.next_tick(datetime.now(UTC))
        except StopIteration:
            raise ScheduleError(f"cron expression {spec.cron!r} never matches a date") from None
        return spec

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        """For people: ``cron 30 2 * * * (Europe/Oslo)`` or ``every 60s``."""
        if self.every is not None:
            return f"every {self.every}s"
        return f"cron {self.cron} ({self.timezone})"

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (timezone-aware), in UTC."""
        after = _utc(after)
        if self.every is not None:
            step = self.every * _MICROSECONDS
            since_epoch = (after - _EPOCH) // timedelta(microseconds=1)
            return _EPOCH + timedelta(microseconds=(since_epoch // step + 1) * step)
        assert self.cron is not None
        ticks = CronSim(self.cron, after.astimezone(self.zone))
        while True:
            # Started inside the repeated hour of a fall-back day, cronsim can answer with the
            # first occurrence of that hour, which is earlier: skip what is not after ``after``.
            tick = next(ticks).astimezone(UTC)
            if tick > after:
                return tick

    def due_tick(self, next_fire_at: datetime, now: datetime) -> tuple[datetime | None, datetime]:
        """(the tick to fire now, or None; the schedule's next fire time afterwards).

        ``next_fire_at`` is the first tick not fired yet. When it is not due, nothing
        fires and it stays. When it is, the latest tick at or before ``now`` fires (the
        ones before it were missed while nothing ran: skipped), and the next fire time
        is the first tick after ``now``.
        """
        next_fire_at, now = _utc(next_fire_at), _utc(now)
        if next_fire_at > now:
            return None, next_fire_at
        if self.every is not None:
            step = timedelta(seconds=self.every)
            latest = _EPOCH + (now - _EPOCH) // step * step
            return latest, latest + step
        # Walk forward from a little before ``now`` (two ticks back, found backwards) rather
        # than from ``next_fire_at``: after a long downtime that could be a million ticks ago.
        start = max(next_fire_at - timedelta(microseconds=1), self._two_ticks_before(now))
        tick, following = None, self.next_tick(start)
        while following <= now:
            tick, following = following, self.next_tick(following)
        return tick, following

    def _two_ticks_before(self, now: datetime) -> datetime:
        assert self.cron is not None
        back = CronSim(self.cron, now.astimezone(self.zone), reverse=True)
        try:
            next(back)
            return next(back).astimezone(UTC) - timedelta(microseconds=1)
        except StopIteration:
            return datetime.min.replace(tzinfo=UTC)


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of a tick's instance: ``nightly@2026-03-29T01:00:00+00:00``."""
    return f"{name}@{_utc(tick).isoformat()}"


@dataclass(frozen=True)
class ScheduleInfo:
    """A stored schedule, as users see it."""

    name: str
    workflow_id: str
    version: str
    spec: ScheduleSpec
    inputs: dict[str, Any]
    paused: bool
    #: The first tick not fired yet (UTC): when it comes, a running worker fires it.
    next_fire_at: datetime
    created_at: datetime
    last_tick: datetime | None = None
    last_instance_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The fields ``fuseline schedules list --json`` prints (times in ISO 8601, UTC)."""
        return {
            "name": self.name,
            "workflow_id": self.workflow_id,
            "version": self.version,
            "cron": self.spec.cron,
            "every": self.spec.every,
            "timezone": self.spec.timezone if self.spec.cron is not None else None,
            "spec": self.spec.describe(),
            "inputs": self.inputs,
            "paused": self.paused,
            "next_fire_at": _iso(self.next_fire_at),
            "last_tick": _iso(self.last_tick),
            "last_instance_id": self.last_instance_id,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class NewSchedule:
    """A schedule to store, checked: its workflow's definition, its spec, its inputs as JSON text."""

    name: str
    schema: WorkflowSchema
    spec: ScheduleSpec
    inputs: str = field(repr=False)


class HasSchema(Protocol):
    def to_schema(self) -> WorkflowSchema: ...


def new_schedule(
    workflow: WorkflowSchema | HasSchema,
    *,
    name: str | None,
    cron: str | None,
    every: Any,
    inputs: Mapping[str, Any] | None,
    timezone: str | None,
) -> NewSchedule:
    """Check everything a new schedule says (see :meth:`ScheduleSpec.of`); ScheduleError or
    InvalidInputs name the first mistake. The name defaults to the workflow id."""
    schema = workflow if isinstance(workflow, WorkflowSchema) else workflow.to_schema()
    chosen = schema.workflow_id if name is None else name
    problem = name_problem("schedule name", chosen, MAX_NAME_LENGTH)
    if problem is not None:
        raise ScheduleError(problem)
    spec = ScheduleSpec.of(cron=cron, every=every, timezone=timezone)
    return NewSchedule(chosen, schema, spec, codec.encode_inputs(dict(inputs or {})))


def schedule_exists(name: str) -> ScheduleError:
    """The error for a name already taken: a schedule is replaced only by removing it first."""
    return ScheduleError(
        f"a schedule named {name!r} already exists; remove it first (fuseline schedules remove "
        f"{name}) or choose another name"
    )


def _seconds(every: Any) -> int:
    if isinstance(every, timedelta):
        seconds: Any = every.total_seconds()
    elif isinstance(every, (int, float)) and not isinstance(every, bool):
        seconds = every
    else:
        raise ScheduleError(f"every must be a whole number of seconds, not {every!r}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds != int(seconds):
        raise ScheduleError(f"every must be a whole number of seconds, not {every!r}")
    if seconds <= 0:
        raise ScheduleError(f"every must be at least 1 second, not {every!r}")
    if seconds > MAX_EVERY_SECONDS:
        raise ScheduleError(f"every must be at most {MAX_EVERY_SECONDS} seconds (100 years), not {every!r}")
    return int(seconds)


def _cron(expression: Any) -> str:
    if not isinstance(expression, str):
        raise ScheduleError(f"a cron expression is text like '30 2 * * *', not {expression!r}")
    normal = re.sub(r"\s+", " ", expression.strip())
    if len(normal) > MAX_CRON_LENGTH:
        raise ScheduleError(
            f"the cron expression is {len(normal)} characters long; the limit is {MAX_CRON_LENGTH}"
        )
    try:
        CronSim(normal, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError(
            f"invalid cron expression {expression!r}: {exc} (five fields: minute hour day-of-month "
            "month day-of-week, e.g. '30 2 * * *')"
        ) from None
    return normal


def _zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str):
        raise ScheduleError(f"a time zone is a name like 'Europe/Oslo', not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Oslo' or 'UTC')"
        ) from None


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"schedule times must be timezone-aware, not {value.isoformat()}")
    return value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


class ScheduleMethods:
    """The schedule part of the broker contract (:class:`~fuseline.broker.base.Broker` has it).

    A broker that keeps schedules overrides the storage methods; the others
    refuse them. ``add_schedule`` checks everything before the broker sees it.
    """

    def add_schedule(
        self,
        workflow: WorkflowSchema | HasSchema,
        *,
        name: str | None = None,
        cron: str | None = None,
        every: int | timedelta | None = None,
        inputs: Mapping[str, Any] | None = None,
        timezone: str | None = None,
    ) -> ScheduleInfo:
        """Add a schedule of ``workflow`` (a Workflow or its schema), named ``name`` (default:
        the workflow id), ticking by ``cron`` in ``timezone`` (default UTC) or ``every`` whole
        seconds; each tick dispatches one instance with ``inputs``. Registers the definition
        as a dispatch does. ScheduleError (a bad spec, a name taken) writes nothing."""
        checked = new_schedule(workflow, name=name, cron=cron, every=every, inputs=inputs, timezone=timezone)
        return self.store_schedule(checked)

    def store_schedule(self, schedule: NewSchedule) -> ScheduleInfo:
        """Store a checked schedule with its first tick after now, and its workflow definition."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def pause_schedule(self, name: str) -> ScheduleInfo:
        """Stop firing it (UnknownSchedule if there is none); pausing a paused one changes nothing."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def resume_schedule(self, name: str) -> ScheduleInfo:
        """Fire it again from the first tick after now: ticks passed while paused never fire."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def remove_schedule(self, name: str) -> None:
        """Delete it (UnknownSchedule if there is none); the instances it dispatched stay."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def fire_schedules(self) -> list[str]:
        """Fire the due ticks now; the ids of the instances dispatched. Workers' claims call it."""
        return []
